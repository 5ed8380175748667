"""A publisher whose RTP sequence numbers jump: a counted drop where the packet enters.

Forwarded, a packet far behind the newest lands behind the viewer's SRTP replay
window and fails to protect on the way out (counted as ``srtp_protect`` on the
viewer's transport, far from its cause). Ferry drops it on arrival instead, as
``rtp_seq_jump`` on the publisher's track, and the viewer's stream goes on.

Runs a real in-memory Ferry (tests/fuzz/harness.py): SRTP, the router and DownTracks
are the production ones, the clock is virtual.
"""

from __future__ import annotations

from media.transport.srtp import SrtpReplayError
from media.wire.rtp import build_audio_level, build_rtp, parse_rtp
from tests.fuzz.harness import VIEWER_ADDR, Call
from tests.fuzz.targets import EXT_AUDIO_LEVEL, EXT_MID

AUDIO_SSRC = 0x1111  # lite_offer's audio SSRC


def _audio(call: Call, seq: int) -> bytes:
    ids = call.ext_ids
    ext = [(ids[EXT_MID], b"0"), (ids[EXT_AUDIO_LEVEL], build_audio_level(True, 30))]
    return build_rtp(
        payload_type=111,
        seq=seq & 0xFFFF,
        timestamp=(seq * 960) & 0xFFFFFFFF,
        ssrc=AUDIO_SSRC,
        payload=b"\xfc" + bytes(60),
        extensions=ext,
    )


def _viewer_audio_seqs(call: Call) -> list[int]:
    """Sequence numbers of the audio Ferry sent the viewer since the last call."""
    srtp = call.viewer.srtp
    assert srtp is not None
    seqs = []
    for data, addr in call.stack.mux.sent:
        if addr != VIEWER_ADDR or not 127 < data[0] < 192 or 191 < data[1] < 224:
            continue
        try:
            view = parse_rtp(srtp.unprotect(data))
        except SrtpReplayError:
            continue
        if view.payload_type in (111, 63):
            seqs.append(view.seq)
    call.stack.mux.sent.clear()
    return seqs


def test_hostile_seq_jumps_are_counted_at_entry_and_never_reach_srtp() -> None:
    call = Call()
    listener = call.pub_transport.listener
    assert listener is not None
    track = next(t for t in listener.tracks_by_mid.values() if t.kind == "audio")
    engine = call.stack.engine
    # A real stream, then packets that jump back, forward and far back, each alone,
    # with the real stream going on between them.
    sequence = [*range(1000, 1010), 1010 - 2000, 1010, 1011, 1011 + 20_000, 1012, 1013 - 30_000, 1013, 1014]
    for seq in sequence:
        listener.on_rtp(_audio(call, seq), engine.clock_ms)
        engine.advance(20.0)
    sent = _viewer_audio_seqs(call)
    assert track.stats.drops["rtp_seq_jump"] == 3
    assert call.sub_transport.drops["srtp_protect"] == 0
    # The viewer got the real stream, in order and gapless: 15 packets, seqs + 1 each.
    assert len(sent) == 15
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(sent, sent[1:], strict=False))


def test_seq_jump_confirmed_by_its_successor_is_followed_to_the_viewer() -> None:
    call = Call()
    listener = call.pub_transport.listener
    assert listener is not None
    track = next(t for t in listener.tracks_by_mid.values() if t.kind == "audio")
    engine = call.stack.engine
    for seq in [*range(1000, 1005), *range(9000, 9005)]:  # the sender's numbering moved
        listener.on_rtp(_audio(call, seq), engine.clock_ms)
        engine.advance(20.0)
    sent = _viewer_audio_seqs(call)
    assert track.stats.drops["rtp_seq_jump"] == 1  # 9000, before 9001 confirmed it
    assert call.sub_transport.drops["srtp_protect"] == 0
    assert len(sent) == 9
