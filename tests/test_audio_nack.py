"""Audio NACKs are answered for listeners without RED, socket-free.

Browsers never negotiate RTX for audio, so a NACKed Opus packet can only go again on
its own SSRC and SRTP index. With transport-cc every packet carries the transport-wide
seq it was sent with; restamping a new one would encrypt different bytes under the same
index, so the resend must carry the seq it first had: the same bytes exactly.
"""

from __future__ import annotations

from media.routing.down_track import TWCC_OFFSET
from tests.router_setup import audio_viewer


def _audio_packet(ssrc: int, seq: int, twcc_id: int) -> bytes:
    header = bytes((0x90, 111)) + seq.to_bytes(2, "big") + (960 * seq).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
    ext = b"\xbe\xde\x00\x01" + bytes((twcc_id << 4 | 1, 0, 0, 0))
    return header + ext + bytes(80)


def test_nacked_audio_goes_again_as_the_same_bytes_with_its_first_transport_seq() -> None:
    engine, sub, down = audio_viewer()
    assert down.twcc_ext_id and down.rtx_ssrc is None
    wire: list[tuple[bytes, int, int]] = []
    sub.transport.send_rtp = lambda packet, seq_at=0, seq=0: wire.append((packet, seq_at, seq))  # type: ignore[method-assign]
    now = engine.now_ms()
    for seq in range(100, 110):
        packet = _audio_packet(down.ssrc, seq, down.twcc_ext_id)
        down.rtx_cache.put(seq, packet, now)
        sub.send_rtp(packet, "audio", now)
    assert [w[1] for w in wire] == [TWCC_OFFSET] * 10
    first = {int.from_bytes(p[2:4], "big"): (p, s) for p, _, s in wire}
    assert len({s for _, s in first.values()}) == 10  # one transport-wide seq each

    sent = down.on_nack([103, 107], now + 50.0)
    assert sent == 2 and down.resends_skipped == 0
    resent = wire[10:]
    assert [(p, s) for p, _, s in resent] == [first[103], first[107]]
    assert sub.audio_resent == 2


def test_audio_nack_for_a_packet_whose_send_is_forgotten_is_skipped_not_restamped() -> None:
    engine, sub, down = audio_viewer()
    wire: list[tuple[bytes, int, int]] = []
    sub.transport.send_rtp = lambda packet, seq_at=0, seq=0: wire.append((packet, seq_at, seq))  # type: ignore[method-assign]
    now = engine.now_ms()
    down.rtx_cache.put(5, _audio_packet(down.ssrc, 5, down.twcc_ext_id), now)  # cached, never sent
    assert down.on_nack([5], now) == 0
    assert down.resends_skipped == 1 and wire == []
