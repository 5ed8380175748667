"""The forward path of media/routing, sans-I/O: PublishedTrack layers in, DownTracks out.

Packets are built by `tests.fakes`, parsed with `parse_rtp` and fed to
`Layer.on_packet(view, now_ms, is_rtx)` in virtual time; DownTracks send into a
recording sink and PLIs land in a recording keyframe sink. No sockets, no loop.
"""

from __future__ import annotations

import random

import pytest
from aiortc.rtp import RtcpReceiverInfo
from hypothesis import event, given, settings
from hypothesis import strategies as st

from media.ortc import RtpCodec
from media.routing.down_track import TWCC_OFFSET, DownTrack
from media.routing.published_track import PublishedTrack
from media.stats import EngineStats
from media.wire.red import parse_red
from media.wire.rtp import ONE_BYTE_PROFILE, build_rtp, parse_rtp
from media.wire.seqnum import seq_diff

from .fakes import (
    FakeDownTrackSink,
    FakeKeyframeSink,
    ManualClock,
    OpusStream,
    SentPacket,
    Vp8Layer,
    make_tag,
    opus_frame,
    parse_tag,
    vp8_fields,
    vp8_payload,
)

VP8 = RtpCodec(96, "VP8", 90000, rtx_payload_type=97)
OPUS = RtpCodec(111, "opus", 48000, channels=2)
LAYER_SSRCS = (1001, 1002, 1003)
OUT_SSRC, OUT_RTX_SSRC = 0x5150_0001, 0x5150_0002
OUT_PT, OUT_RTX_PT = 100, 101  # differ from the publisher's, so the rewrite shows
SEQ_MASK, TS_MASK = 0xFFFF, 0xFFFFFFFF


# --------------------------------------------------------------------------- harness


def video_track(
    rids: list[str] | None = None, codec: RtpCodec = VP8
) -> tuple[PublishedTrack, FakeKeyframeSink, EngineStats]:
    stats = EngineStats()
    plis = FakeKeyframeSink()
    track = PublishedTrack(
        participant_sid="PA_pub",
        mid="1",
        kind="video",
        codec=codec,
        rids=rids,
        stats=stats,
        keyframe_sink=plis,
    )
    for layer, ssrc in zip(track.layers, LAYER_SSRCS, strict=False):
        layer.bind_ssrc(ssrc)
    return track, plis, stats


def audio_track(red_pt: int | None = 63) -> tuple[PublishedTrack, EngineStats]:
    stats = EngineStats()
    track = PublishedTrack(
        participant_sid="PA_pub",
        mid="0",
        kind="audio",
        codec=OPUS,
        rids=None,
        stats=stats,
        keyframe_sink=FakeKeyframeSink(),
        red_pt=red_pt,
    )
    track.layers[0].bind_ssrc(2001)
    return track, stats


def subscribe(track: PublishedTrack, **overrides: object) -> tuple[DownTrack, FakeDownTrackSink]:
    video = track.kind == "video"
    params: dict[str, object] = dict(
        mid="0",
        ssrc=OUT_SSRC,
        rtx_ssrc=OUT_RTX_SSRC if video else None,
        payload_type=OUT_PT if video else 111,
        rtx_payload_type=OUT_RTX_PT if video else None,
        red_payload_type=None,
        clock_rate=track.codec.clock_rate,
        twcc_ext_id=None,
        audio_level_ext_id=None,
        rng=random.Random(1),
    )
    params.update(overrides)
    sink = FakeDownTrackSink()
    down = DownTrack(track, sink, **params)  # type: ignore[arg-type]
    track.add_down_track(down)
    return down, sink


def feed(
    track: PublishedTrack, index: int, packets: list[bytes], now_ms: float, *, rtx: bool = False
) -> None:
    for packet in packets:
        track.layers[index].on_packet(parse_rtp(packet), now_ms, rtx)


def report_block(
    down: DownTrack, now_ms: float, *, fraction_lost: float = 0.0, rtt_ms: float | None = None
) -> None:
    """A receiver report from the subscriber about `down` (loss and, if given, RTT)."""
    lsr = 0x1234_0000 if rtt_ms is not None else 0
    now_mid = lsr + int((rtt_ms or 0.0) * 65.536)
    info = RtcpReceiverInfo(
        ssrc=down.ssrc,
        fraction_lost=int(fraction_lost * 256),
        packets_lost=0,
        highest_sequence=0,
        jitter=0,
        lsr=lsr,
        dlsr=0,
    )
    down.stream.on_report_block(info, now_ms, now_mid)


def tags(sent: list[SentPacket]) -> list[tuple[int, int] | None]:
    return [p.tag for p in sent]


# --------------------------------------------------------------------------- 1. one layer


def test_nothing_is_forwarded_before_a_keyframe_and_the_keyframe_is_first() -> None:
    track, _, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0])
    clock = ManualClock()
    for _ in range(3):
        feed(track, 0, pub.frame(packets=2), clock.advance(33))
    assert sink.sent == []
    key = pub.frame(keyframe=True, packets=3)
    # The keyframe's second packet arriving first must not start the stream.
    feed(track, 0, [key[1]], clock.advance(33))
    assert sink.sent == []
    feed(track, 0, [key[0], key[2]], clock.now_ms)
    feed(track, 0, pub.frame(packets=2), clock.advance(33))
    out = sink.media()
    assert out[0].tag == parse_tag(key[0])
    assert vp8_fields(out[0].data)[2] is True
    assert down.selector.current == 0
    assert [p.view.ssrc for p in out] == [OUT_SSRC] * len(out)
    assert [p.view.payload_type for p in out] == [OUT_PT] * len(out)
    assert [p.view.marker for p in out] == [False, True, False, True]


# Rows: (name, first input seq, first input ts, per-packet seq steps, ts step per packet).
CONTINUITY_ROWS = [
    ("in order", 1000, 90_000, [1] * 20, 3000),
    ("gaps kept for NACK", 1000, 90_000, [1, 1, 3, 1, 2, 1, 5, 1], 3000),
    ("input seq and ts wrap", 65_530, 0xFFFF_F000, [1] * 20, 3000),
    # Steps large enough that the output seq (and ts) wrap too, whatever the
    # random start offset: 40 x 1500 > 2^16, and 40 x 2^27 > 2^32.
    ("output seq and ts wrap", 60_000, 0xF000_0000, [1500] * 40, 1 << 27),
]


@pytest.mark.parametrize(
    ("first_seq", "first_ts", "steps", "ts_step"),
    [row[1:] for row in CONTINUITY_ROWS],
    ids=[row[0] for row in CONTINUITY_ROWS],
)
def test_output_seq_and_ts_follow_input_with_constant_offsets(
    first_seq: int, first_ts: int, steps: list[int], ts_step: int
) -> None:
    track, _, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0], seq=first_seq, ts=first_ts, ts_step=ts_step)
    clock = ManualClock(1000.0)
    inputs = []
    for i, step in enumerate([1, *steps]):
        pub.seq = (pub.seq + step - 1) & SEQ_MASK  # frame() adds the last 1
        packet = pub.frame(keyframe=i == 0)[0]
        inputs.append(parse_rtp(packet))
        feed(track, 0, [packet], clock.advance(33))
    out = [p.view for p in sink.media()]
    assert len(out) == len(inputs)
    seq_offsets = {(o.seq - i.seq) & SEQ_MASK for o, i in zip(out, inputs, strict=True)}
    ts_offsets = {(o.timestamp - i.timestamp) & TS_MASK for o, i in zip(out, inputs, strict=True)}
    assert len(seq_offsets) == 1 and len(ts_offsets) == 1
    # The gaps the subscriber sees are exactly the publisher's (so it can NACK them).
    assert [seq_diff(b.seq, a.seq) for a, b in zip(out, out[1:], strict=False)] == steps
    if steps[0] > 1000:
        assert any(b.seq < a.seq for a, b in zip(out, out[1:], strict=False)), "no output seq wrap"
        assert any(b.timestamp < a.timestamp for a, b in zip(out, out[1:], strict=False))


def test_a_late_packet_fills_its_gap_with_the_same_offset() -> None:
    track, _, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0])
    frames = [pub.frame(keyframe=i == 0)[0] for i in range(5)]
    for packet in (frames[0], frames[1], frames[3], frames[4], frames[2]):  # 2 arrives late (RTX)
        feed(track, 0, [packet], 0.0, rtx=packet is frames[2])
    out = {p.tag: p.view.seq for p in sink.media()}
    first = out[parse_tag(frames[0])]
    assert [out[parse_tag(f)] for f in frames] == [(first + i) & SEQ_MASK for i in range(5)]


def test_duplicates_are_dropped_and_counted_not_forwarded() -> None:
    """Chrome probes with RTX copies of packets it sent; a repair can arrive twice.
    A second copy forwarded would reuse an SRTP index downstream (a replay)."""
    track, _, stats = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0])
    frames = [pub.frame(keyframe=i == 0)[0] for i in range(4)]
    feed(track, 0, frames[:2], 0.0)
    feed(track, 0, [frames[1], frames[0]], 10.0, rtx=True)  # probe copies: already here
    feed(track, 0, [frames[3]], 20.0)
    feed(track, 0, [frames[2]], 30.0, rtx=True)  # a real repair: forwarded
    feed(track, 0, [frames[2]], 40.0, rtx=True)  # ...and its late twin: not
    out = [p.view.seq for p in sink.media()]
    assert len(out) == len(set(out)) == 4
    assert stats.drops["duplicate"] == 3


# --------------------------------------------------------------------------- 2. simulcast


class Simulcast:
    """Three VP8 layers with independent seqs, timestamps and picture ids, one DownTrack."""

    def __init__(self, pid_start: tuple[int, int, int] = (32_760, 5, 20_000)) -> None:
        self.track, self.plis, self.stats = video_track(["f", "h", "q"])  # sorted to q, h, f
        self.down, self.sink = subscribe(self.track)
        self.pubs = [
            Vp8Layer(0, LAYER_SSRCS[0], seq=100, ts=1_000, picture_id=pid_start[0], tl0picidx=250),
            Vp8Layer(
                1,
                LAYER_SSRCS[1],
                seq=40_000,
                ts=3_000_000_000,
                picture_id=pid_start[1],
                tl0picidx=0,
            ),
            Vp8Layer(2, LAYER_SSRCS[2], seq=65_000, ts=77, picture_id=pid_start[2], tl0picidx=128),
        ]
        self.clock = ManualClock(10_000.0)

    def tick(self, keyframes: tuple[int, ...] = ()) -> dict[int, list[bytes]]:
        """One frame interval: every layer sends a frame (2 packets when a keyframe)."""
        now = self.clock.advance(33.0)
        sent = {}
        for pub in self.pubs:
            key = pub.index in keyframes
            sent[pub.index] = pub.frame(keyframe=key, packets=2 if key else 1)
            feed(self.track, pub.index, sent[pub.index], now)
        return sent


def assert_continuous(out: list[SentPacket]) -> None:
    """Seq +1 per packet, timestamps never back, picture id +1 (mod 2^15) per frame and
    TL0PICIDX +1 (mod 2^8) per frame (every test frame is a TL0 frame)."""
    for a, b in zip(out, out[1:], strict=False):
        va, vb = a.view, b.view
        assert seq_diff(vb.seq, va.seq) == 1, (a.tag, b.tag)
        dts = seq_diff(vb.timestamp, va.timestamp, 1 << 32)
        pid_a, tl0_a, _ = vp8_fields(a.data)
        pid_b, tl0_b, _ = vp8_fields(b.data)
        assert pid_a is not None and pid_b is not None and tl0_a is not None and tl0_b is not None
        if dts == 0:  # same frame
            assert (pid_b, tl0_b) == (pid_a, tl0_a), (a.tag, b.tag)
        else:
            assert dts > 0, (a.tag, b.tag)
            assert pid_b == (pid_a + 1) & 0x7FFF, (a.tag, b.tag, pid_a, pid_b)
            assert tl0_b == (tl0_a + 1) & 0xFF, (a.tag, b.tag, tl0_a, tl0_b)


def test_simulcast_switch_waits_for_a_keyframe_of_the_target_and_stays_continuous() -> None:
    sc = Simulcast()
    down = sc.down
    down.selector.set_target(0, sc.clock.now_ms)
    assert sc.plis.plis == [LAYER_SSRCS[0]]
    sc.tick(keyframes=(0,))
    for _ in range(3):
        sc.tick()
    assert {p.tag[0] for p in sc.sink.media()} == {0}

    down.selector.set_target(2, sc.clock.now_ms)
    assert sc.plis.plis[-1] == LAYER_SSRCS[2]
    for _ in range(3):
        sc.tick(keyframes=(1,))  # a keyframe of a layer that is not the target
    assert {p.tag[0] for p in sc.sink.media()} == {0}, "forwarding continues on the old layer"
    assert down.selector.current == 0

    late_from_layer2 = sc.pubs[2].frame()  # sent before the keyframe, arrives after it
    sent = sc.tick(keyframes=(2,))
    feed(sc.track, 2, late_from_layer2, sc.clock.now_ms)
    feed(sc.track, 0, sc.pubs[0].frame(), sc.clock.now_ms)  # old layer keeps coming
    for _ in range(3):
        sc.tick()
    out = sc.sink.media()
    at = next(i for i, p in enumerate(out) if p.tag[0] != 0)
    switched = out[at:]
    assert out[at - 1].tag == parse_tag(sent[0][0]), "layer 0 until layer 2's keyframe"
    assert switched[0].tag == parse_tag(sent[2][0])
    assert vp8_fields(switched[0].data)[2] is True
    assert {p.tag[0] for p in switched} == {2}
    assert parse_tag(late_from_layer2[0]) not in tags(out)
    assert down.selector.current == 2 and sc.stats.layer_switches == 1
    assert_continuous(out)
    # Layer 0's picture ids started at 32760: the munged ids crossed 2^15 on layer 2.
    assert any(vp8_fields(p.data)[0] == 0 for p in out)


def test_simulcast_up_and_down_repeatedly_keeps_seq_ts_and_picture_id_monotonic() -> None:
    sc = Simulcast()
    schedule = [0, 2, 1, 0, 2, 0, 1, 2, 1, 0]
    for n, target in enumerate(schedule):
        sc.down.selector.set_target(target, sc.clock.now_ms)
        sc.tick()  # nothing from the target yet
        if n:
            assert sc.down.selector.current == schedule[n - 1]
        sc.clock.advance(300)  # let the PLI throttle pass
        sc.tick(keyframes=(target,))
        assert sc.down.selector.current == target
        assert sc.plis.plis[-1] == LAYER_SSRCS[target]
        for _ in range(2):
            sc.tick()
    out = sc.sink.media()
    assert len({p.view.seq for p in out}) == len(out)
    assert_continuous(out)
    assert sc.stats.layer_switches == len(schedule) - 1
    # Runs of source layers in the output follow the schedule exactly.
    runs = [out[0].tag[0]]
    for p in out[1:]:
        if p.tag[0] != runs[-1]:
            runs.append(p.tag[0])
    assert runs == schedule


def test_switch_timestamp_advances_by_the_wall_clock_gap() -> None:
    sc = Simulcast()
    sc.down.selector.set_target(0, sc.clock.now_ms)
    sc.tick(keyframes=(0,))
    sc.down.selector.set_target(1, sc.clock.now_ms)
    feed(sc.track, 1, sc.pubs[1].frame(keyframe=True), sc.clock.advance(100.0))
    out = sc.sink.media()
    first_new = next(p for p in out if p.tag[0] == 1)
    last_old = [p for p in out if p.tag[0] == 0][-1]
    assert (first_new.view.timestamp - last_old.view.timestamp) & TS_MASK == 100 * 90


def test_picture_id_after_switch_follows_the_newest_frame_not_a_late_packet() -> None:
    sc = Simulcast(pid_start=(500, 9000, 20_000))
    sc.down.selector.set_target(0, sc.clock.now_ms)
    sc.tick(keyframes=(0,))  # frame pid 500 (2 packets)
    lost = sc.pubs[0].frame(packets=2)  # frame pid 501: its 2nd packet is lost...
    feed(sc.track, 0, lost[:1], sc.clock.advance(33))
    sc.tick()  # frame pid 502
    feed(sc.track, 0, lost[1:], sc.clock.advance(5), rtx=True)  # ...and repaired by RTX
    sc.down.selector.set_target(1, sc.clock.now_ms)
    feed(sc.track, 1, sc.pubs[1].frame(keyframe=True, packets=2), sc.clock.advance(28))
    out = sc.sink.media()
    pids = [vp8_fields(p.data)[0] for p in out if p.view.timestamp != out[-1].view.timestamp]
    switch_pid = vp8_fields(next(p for p in out if p.tag[0] == 1).data)[0]
    assert switch_pid == 503, f"picture ids sent: {pids}, switch got {switch_pid}"


def test_nothing_from_non_selected_layers_and_pli_per_target() -> None:
    sc = Simulcast()
    assert sc.down.selector.target == 2  # default: best layer
    sc.down.selector.set_target(1, sc.clock.now_ms)
    assert sc.plis.plis == [LAYER_SSRCS[1]]
    sc.tick(keyframes=(0, 2))
    assert sc.sink.sent == [], "keyframes of other layers must not start the stream"
    sc.tick(keyframes=(1,))
    sc.tick(keyframes=(0, 2))
    assert {p.tag[0] for p in sc.sink.media()} == {1}
    assert sc.stats.pli_sent == 1


# --------------------------------------------------------------------------- 3. NACK -> RTX


def rtx_setup() -> tuple[
    PublishedTrack, DownTrack, FakeDownTrackSink, list[SentPacket], ManualClock
]:
    track, _, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0])
    clock = ManualClock(0.0)
    for i in range(6):
        feed(track, 0, pub.frame(keyframe=i == 0), clock.advance(33))
    sent = sink.take()
    report_block(down, clock.now_ms, rtt_ms=100.0)
    assert down.stream.rtt_ms == pytest.approx(100.0, abs=0.1)
    return track, down, sink, sent, clock


def test_nack_is_answered_on_rtx_with_the_original_seq_first() -> None:
    _, down, sink, sent, clock = rtx_setup()
    original = sent[2]
    assert down.on_nack([original.view.seq], clock.advance(10)) == 1
    (rtx,) = sink.take()
    view = rtx.view
    assert rtx.kind == "rtx"
    assert (view.ssrc, view.payload_type) == (OUT_RTX_SSRC, OUT_RTX_PT)
    assert view.timestamp == original.view.timestamp
    assert view.marker == original.view.marker
    assert bytes(view.payload[:2]) == original.view.seq.to_bytes(2, "big")
    assert bytes(view.payload[2:]) == original.payload


# Rows: (ms after the first answer, expected answers). RTT is 100 ms.
RESEND_ROWS = [
    (20.0, 0),  # well within the RTT: a repeat NACK is suppressed
    (70.0, 0),
    (150.0, 1),  # after the RTT: answered again
]


@pytest.mark.parametrize(("after_ms", "expected"), RESEND_ROWS)
def test_repeated_nack_within_rtt_is_suppressed(after_ms: float, expected: int) -> None:
    _, down, sink, sent, clock = rtx_setup()
    seq = sent[3].view.seq
    assert down.on_nack([seq], clock.advance(1)) == 1
    assert down.on_nack([seq], clock.advance(after_ms)) == expected
    assert len(sink.rtx()) == 1 + expected


def test_nack_skips_missing_and_too_old_seqs() -> None:
    _, down, sink, sent, clock = rtx_setup()
    never_sent = (sent[-1].view.seq + 10) & SEQ_MASK
    seqs = [never_sent, sent[1].view.seq, sent[4].view.seq]
    assert down.on_nack(seqs, clock.advance(1)) == 2
    assert [int.from_bytes(p.view.payload[:2], "big") for p in sink.take()] == seqs[1:]
    # The cache keeps packets for one second.
    assert down.on_nack([sent[0].view.seq], clock.advance(1500)) == 0
    assert sink.sent == []


# --------------------------------------------------------------------------- 4. RED


class Audio:
    """An Opus/RED publisher, a plain-Opus subscriber and a RED-capable one."""

    def __init__(self, red_pt: int | None = 63) -> None:
        self.track, self.stats = audio_track(red_pt)
        self.plain, self.plain_sink = subscribe(self.track, ssrc=3001)
        self.red, self.red_sink = subscribe(self.track, ssrc=3002, red_payload_type=63)
        self.pub = OpusStream(2001)
        self.clock = ManualClock(0.0)

    def send(self, n: int, *, red: bool, lose: set[int] = frozenset()) -> list[int]:
        """Send n frames (`lose`: indexes not delivered); returns the input seqs."""
        seqs = []
        for i in range(n):
            packet = self.pub.next(red=red)
            seqs.append(parse_rtp(packet).seq)
            now = self.clock.advance(20)
            if i not in lose:
                feed(self.track, 0, [packet], now)
        return seqs


def test_red_input_rebuilds_lost_opus_for_a_plain_subscriber() -> None:
    a = Audio()
    seqs = a.send(10, red=True, lose={3, 6, 7})
    out = a.plain_sink.media()
    views = [p.view for p in out]
    assert [v.payload_type for v in views] == [111] * 10
    assert [p.tag[1] for p in out] == seqs, "every frame, in order, rebuilt ones included"
    assert [p.payload for p in out] == [opus_frame(s) for s in seqs]
    base_seq, base_ts = views[0].seq, views[0].timestamp
    assert [v.seq for v in views] == [(base_seq + i) & SEQ_MASK for i in range(10)]
    assert [v.timestamp for v in views] == [(base_ts + 960 * i) & TS_MASK for i in range(10)]
    assert a.stats.red_recovered == 3


def test_red_subscriber_on_a_clean_link_gets_plain_opus() -> None:
    a = Audio()
    seqs = a.send(8, red=True, lose={4})
    out = a.red_sink.media()
    assert [p.view.payload_type for p in out] == [111] * 8
    assert [p.payload for p in out] == [opus_frame(s) for s in seqs]
    assert a.red.red_added == 0 and a.stats.red_added == 0


def test_red_subscriber_reporting_loss_gets_red_as_is_and_no_rebuilt_packets() -> None:
    a = Audio()
    a.send(3, red=True)
    report_block(a.red, a.clock.now_ms, fraction_lost=0.2)
    a.red_sink.take()
    inputs = []
    for i in range(8):
        packet = a.pub.next(red=True)
        now = a.clock.advance(20)
        if i not in (2, 5):
            inputs.append(packet)
            feed(a.track, 0, [packet], now)
    out = a.red_sink.take()
    assert [p.view.payload_type for p in out] == [63] * len(inputs)
    assert [p.payload for p in out] == [bytes(parse_rtp(x).payload) for x in inputs]
    in_seqs = [parse_rtp(x).seq for x in inputs]
    offset = (out[0].view.seq - in_seqs[0]) & SEQ_MASK
    assert [p.view.seq for p in out] == [(s + offset) & SEQ_MASK for s in in_seqs], "gaps kept"
    assert a.stats.red_recovered == 2  # the plain subscriber still got them
    assert len(a.plain_sink.media()) == 11


def test_red_is_added_by_ferry_for_plain_opus_input_on_a_lossy_link() -> None:
    a = Audio(red_pt=None)
    report_block(a.red, 0.0, fraction_lost=0.2)
    seqs = a.send(5, red=False)
    out = a.red_sink.media()
    assert [p.view.payload_type for p in out] == [63] * 5
    for i, p in enumerate(out):
        blocks = parse_red(p.payload)
        assert blocks[-1].data == opus_frame(seqs[i])
        assert blocks[-1].payload_type == 111
        redundant = blocks[:-1]
        assert [b.data for b in redundant] == [opus_frame(s) for s in seqs[max(0, i - 2) : i]]
        assert [b.timestamp_offset for b in redundant] == [
            960 * (i - j) for j in range(max(0, i - 2), i)
        ]
    assert a.red.red_added == 5 and a.stats.red_added == 5
    assert [p.view.payload_type for p in a.plain_sink.media()] == [111] * 5


def test_ferry_added_red_has_redundancy_from_the_first_packet_after_loss() -> None:
    a = Audio(red_pt=None)
    seqs = a.send(3, red=False)  # clean: plain Opus, encoder history warm
    report_block(a.red, a.clock.now_ms, fraction_lost=0.2)
    seqs += a.send(1, red=False)
    last = a.red_sink.media()[-1]
    assert last.view.payload_type == 63
    assert [b.data for b in parse_red(last.payload)] == [opus_frame(s) for s in seqs[1:]]


def test_add_red_off_still_forwards_the_publishers_red_to_a_lossy_red_subscriber() -> None:
    a = Audio()
    a.red.add_red = False
    report_block(a.red, 0.0, fraction_lost=0.2)
    a.send(4, red=True)
    assert [p.view.payload_type for p in a.red_sink.media()] == [63] * 4


def test_add_red_off_never_wraps_plain_opus() -> None:
    a = Audio(red_pt=None)
    a.red.add_red = False
    report_block(a.red, 0.0, fraction_lost=0.2)
    a.send(4, red=False)
    assert [p.view.payload_type for p in a.red_sink.media()] == [111] * 4
    assert a.stats.red_added == 0


# --------------------------------------------------------------------------- 5. pausing


def test_pause_stops_output_and_resume_restarts_on_a_keyframe_with_continuous_seqs() -> None:
    track, plis, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0], picture_id=7)
    clock = ManualClock(0.0)
    feed(track, 0, pub.frame(keyframe=True, packets=2), clock.advance(33))
    for _ in range(3):
        feed(track, 0, pub.frame(), clock.advance(33))
    assert down.selector.set_paused(True) is True
    assert down.selector.set_paused(True) is False
    before = sink.take()
    for key in (False, True, False):
        feed(track, 0, pub.frame(keyframe=key), clock.advance(33))
    assert sink.sent == [], "paused: nothing goes out, keyframes included"
    assert down.selector.set_paused(False) is True
    clock.advance(400)
    down.on_timer(clock.now_ms)
    assert plis.plis[-1] == LAYER_SSRCS[0], "resuming asks for a keyframe"
    for _ in range(2):
        feed(track, 0, pub.frame(), clock.advance(33))
    assert sink.sent == [], "resume waits for a keyframe"
    key = pub.frame(keyframe=True, packets=2)
    feed(track, 0, key, clock.advance(33))
    feed(track, 0, pub.frame(), clock.advance(33))
    after = sink.take()
    assert after[0].tag == parse_tag(key[0])
    assert_continuous(before + after)


def test_disabled_by_the_subscriber_forwards_nothing_and_resumes_on_a_keyframe() -> None:
    track, plis, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0], picture_id=7)
    clock = ManualClock(0.0)
    feed(track, 0, pub.frame(keyframe=True, packets=2), clock.advance(33))
    feed(track, 0, pub.frame(), clock.advance(33))
    assert down.selector.set_enabled(False) is True and down.selector.set_enabled(False) is False
    assert not down.selector.active and not down.selector.paused  # not a bandwidth pause
    before = sink.take()
    plis.plis.clear()
    for key in (True, False):
        feed(track, 0, pub.frame(keyframe=key), clock.advance(33))
    down.on_timer(clock.advance(600))
    assert sink.sent == [] and plis.plis == [], "hidden: no media, no keyframe requests"
    assert down.selector.set_enabled(True) is True
    down.on_timer(clock.advance(20))
    assert plis.plis == [LAYER_SSRCS[0]], "shown again: a keyframe is asked for at once"
    feed(track, 0, pub.frame(), clock.advance(33))
    assert sink.sent == []
    key = pub.frame(keyframe=True, packets=2)
    feed(track, 0, key, clock.advance(33))
    after = sink.take()
    assert after[0].tag == parse_tag(key[0])
    assert_continuous(before + after)


def test_a_layer_dynacast_resumed_is_available_only_once_media_flows_again() -> None:
    track, _, _ = video_track(["q", "h", "f"])
    for index in range(3):
        feed(track, index, Vp8Layer(index, LAYER_SSRCS[index]).frame(keyframe=True), 1000.0)
    assert track.available_layers(1100.0) == [0, 1, 2]
    track.layers[2].set_active(False, 1100.0)
    assert track.available_layers(1200.0) == [0, 1]  # paused: gone at once, not after 1.5 s
    track.layers[2].set_active(True, 1300.0)
    assert track.available_layers(1400.0) == [0, 1], "its packets from before the pause do not count"
    feed(track, 2, Vp8Layer(2, LAYER_SSRCS[2], picture_id=50).frame(keyframe=True), 1450.0)
    assert track.available_layers(1500.0) == [0, 1, 2]


def test_a_ramping_upper_layer_is_priced_at_least_two_and_a_half_times_the_layer_below() -> None:
    """Chrome starts h and f low and raises them with its estimate: priced at that, h
    would look affordable to a 300 kbit/s viewer for the few seconds of the ramp."""
    track, _, _ = video_track(["q", "h", "f"])
    for layer, bps in zip(track.layers, (130_000, 150_000, 1_000_000), strict=True):
        layer.last_bps = bps  # its recent peak; no stream yet, so nothing re-measured
    assert track.update_layer_prices(0.0) == [130_000, 325_000, 1_000_000]
    for layer, width in zip(track.layers, (320, 640, 1280), strict=True):
        layer.width = width
    track.layers[2].last_bps = 200_000
    assert track.update_layer_prices(0.0) == [130_000, 325_000, 812_500]
    for layer in track.layers:
        layer.width = 640  # same resolution (a bitrate ladder): only kept increasing
    assert track.update_layer_prices(0.0) == [130_000, 150_000, 200_000]


# --------------------------------------------------------------------------- 6. extensions


def assert_twcc_first(packet: bytes, twcc_id: int) -> None:
    view = parse_rtp(packet)
    assert view.ext_profile == ONE_BYTE_PROFILE
    assert view.extensions()[0][0] == twcc_id
    assert packet[TWCC_OFFSET - 1] == (twcc_id << 4) | 1
    assert view.extension(twcc_id) == packet[TWCC_OFFSET : TWCC_OFFSET + 2]


def test_video_and_rtx_packets_carry_the_twcc_placeholder_first() -> None:
    track, _, _ = video_track()
    down, sink = subscribe(track, twcc_ext_id=5)
    pub = Vp8Layer(0, LAYER_SSRCS[0])
    for i in range(4):
        feed(track, 0, pub.frame(keyframe=i == 0, packets=2), 33.0 * i)
    media = sink.take()
    for p in media:
        assert_twcc_first(p.data, 5)
        assert vp8_fields(p.data)[0] is not None  # the payload still parses after the block
    assert down.on_nack([media[2].view.seq], 500.0) == 1
    (rtx,) = sink.rtx()
    assert_twcc_first(rtx.data, 5)


# Rows: (subscriber twcc id, subscriber audio level id, publisher level byte).
AUDIO_EXT_ROWS = [
    (3, 1, 0x80 | 25),  # both: TWCC first, level forwarded (with its V bit)
    (3, None, 0x80 | 25),  # TWCC only
    (None, 1, 40),  # level only
    (3, 9, None),  # the publisher sent no level: silence (127)
    (None, None, 40),  # no extensions at all
]


@pytest.mark.parametrize(("twcc_id", "level_id", "level"), AUDIO_EXT_ROWS)
def test_audio_extensions(twcc_id: int | None, level_id: int | None, level: int | None) -> None:
    track, _ = audio_track(red_pt=None)
    track.audio_level_ext_id = 12  # the publisher's id (PublisherPeer.add_track sets it)
    down, sink = subscribe(track, twcc_ext_id=twcc_id, audio_level_ext_id=level_id)
    pub = OpusStream(2001, audio_level_ext_id=12)
    for i in range(3):
        feed(track, 0, [pub.next(red=False, level=level)], 20.0 * i)
    out = sink.media()
    assert len(out) == 3
    for p in out:
        view = p.view
        assert p.payload == opus_frame(parse_tag(p.data)[1])
        if twcc_id is None and level_id is None:
            assert view.ext_start == -1
            continue
        assert view.extension(12) is None or level_id == 12
        if twcc_id is not None:
            assert_twcc_first(p.data, twcc_id)
        if level_id is not None:
            assert view.extension(level_id) == bytes((127 if level is None else level,))


# --------------------------------------------------------------------------- 7. property


@st.composite
def forwarding_scripts(draw: st.DrawFn) -> list[tuple]:
    ops = []
    for _ in range(draw(st.integers(1, 120))):
        kind = draw(
            st.sampled_from(["pkt", "pkt", "pkt", "pkt", "late", "target", "target", "pause"])
        )
        if kind in ("pkt", "late"):
            layer = draw(st.integers(0, 2))
            keyframe = draw(st.booleans())
            step = draw(st.sampled_from([1, 1, 1, 2, 3, 7]))  # > 1: a gap
            ops.append((kind, layer, keyframe, step, draw(st.sampled_from([0.0, 1.0, 20.0]))))
        elif kind == "target":
            ops.append((kind, draw(st.integers(0, 2))))
        else:
            ops.append((kind, draw(st.booleans())))
    return ops


@settings(max_examples=150, deadline=None)
@given(forwarding_scripts())
def test_property_no_duplicate_seq_and_no_timestamp_rewind_across_switches(
    script: list[tuple],
) -> None:
    track, _, stats = video_track(["q", "h", "f"])
    down, sink = subscribe(track)
    seq = [100, 30_000, 65_500]
    ts = [1_000, 2_000_000_000, 4_294_000_000]
    skipped: list[list[int]] = [[], [], []]  # seqs of gaps, delivered later by "late"
    ts_of: dict[tuple[int, int], int] = {}
    now = 0.0

    def send(layer: int, s: int, keyframe: bool) -> None:
        pid = s & 0x7FFF
        payload = vp8_payload(
            picture_id=pid, tl0picidx=s & 0xFF, keyframe=keyframe, body=make_tag(layer, s)
        )
        packet = build_rtp(
            payload_type=96,
            seq=s & SEQ_MASK,
            timestamp=ts_of[(layer, s)],
            ssrc=LAYER_SSRCS[layer],
            payload=payload,
        )
        track.layers[layer].on_packet(parse_rtp(packet), now, False)

    for op in script:
        if op[0] == "target":
            down.selector.set_target(op[1], now)
        elif op[0] == "pause":
            down.selector.set_paused(op[1])
        elif op[0] == "pkt":
            _, layer, keyframe, step, dt = op
            now += dt
            for gap in range(step - 1):
                skipped[layer].append(seq[layer] + gap)
                ts_of[(layer, seq[layer] + gap)] = (ts[layer] + 3000 * gap) & TS_MASK
            seq[layer] += step - 1
            ts[layer] = (ts[layer] + 3000 * (step - 1)) & TS_MASK
            ts_of[(layer, seq[layer])] = ts[layer]
            send(layer, seq[layer], keyframe)
            seq[layer] += 1
            ts[layer] = (ts[layer] + 3000) & TS_MASK
        elif skipped[op[1]]:  # "late": a gap filled out of order
            _, layer, keyframe, _, dt = op
            now += dt
            s = skipped[layer].pop(0)
            send(layer, s, keyframe)

    out = sink.media()
    event(
        f"layer switches: {min(stats.layer_switches, 3)}{'+' if stats.layer_switches > 2 else ''}"
    )
    by_seq: dict[int, tuple[int, int]] = {}
    for p in out:
        origin = p.tag
        assert origin is not None
        other = by_seq.setdefault(p.view.seq, origin)
        assert other == origin, f"output seq {p.view.seq} used for {other} and {origin}"
    # In output seq order, timestamps never go back: within a layer they follow the
    # input, and every switch (or resume) starts newer than all that was sent before.
    ordered = sorted(out, key=lambda p: p.view.seq)  # the random start is < 2^15: no wrap
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert seq_diff(b.view.timestamp, a.view.timestamp, 1 << 32) >= 0, (a.tag, b.tag)
    if out:
        assert vp8_fields(out[0].data)[2], "the first packet out is a keyframe"


# --------------------------------------------------------------------------- other codecs


def test_h264_track_is_forwarded() -> None:
    track, _, _ = video_track(codec=RtpCodec(102, "H264", 90000))
    down, sink = subscribe(track, payload_type=102)
    # STAP-A carrying SPS (7), PPS (8) then an IDR slice (5), the usual keyframe start.
    idr = b"\x18" + b"\x00\x02\x67\x42" + b"\x00\x02\x68\xce" + b"\x00\x03\x65\x88\x84"
    for i, payload in enumerate([idr, b"\x41\x9a\x00", b"\x41\x9a\x01"]):
        packet = build_rtp(
            payload_type=102,
            seq=10 + i,
            timestamp=3000 * i,
            ssrc=LAYER_SSRCS[0],
            payload=payload,
            marker=True,
        )
        feed(track, 0, [packet], 33.0 * i)
    assert len(sink.media()) == 3


def test_padding_only_audio_packets_leave_no_hole_in_what_subscribers_get() -> None:
    """An audio-only Chrome publisher pads its bandwidth probes on the audio SSRC:
    empty payloads that take sequence numbers. Nobody gets them, and nobody sees a gap."""
    a = Audio()
    report_block(a.red, a.clock.now_ms, fraction_lost=0.2)
    for i in range(6):
        feed(a.track, 0, [a.pub.next(red=True)], a.clock.advance(20))
        if i in (1, 3):
            padding = build_rtp(payload_type=63, seq=a.pub.seq, timestamp=a.pub.ts - 960, ssrc=2001, payload=b"")
            a.pub.seq += 1
            feed(a.track, 0, [padding], a.clock.advance(1))
    for sink in (a.plain_sink, a.red_sink):
        seqs = [p.view.seq for p in sink.media()]
        assert len(seqs) == 6 and all(p.payload for p in sink.media())
        assert [(s - seqs[0]) & SEQ_MASK for s in seqs] == list(range(6))
    assert a.plain.padding_skipped == a.red.padding_skipped == 2
    assert "red_malformed" not in a.stats.drops


def test_red_follows_the_loss_a_subscriber_nacks_when_its_reports_show_repaired_loss() -> None:
    """A Chrome listener NACKs audio, so its receiver reports count repaired packets as
    received (under 1 % at 20 % loss): the NACKs are the loss it has before repair."""
    a = Audio(red_pt=None)
    report_block(a.red, 0.0, fraction_lost=0.004)
    a.send(50, red=False)
    assert [p.view.payload_type for p in a.red_sink.take()] == [111] * 50  # plain: "no loss"
    for _ in range(5):
        a.send(10, red=False)
        out = a.red_sink.take()
        a.red.on_nack([p.view.seq for p in out[::5]], a.clock.now_ms)  # 20 % NACKed
    a.send(5, red=False)
    assert a.red.nack_loss >= 0.10
    assert [p.view.payload_type for p in a.red_sink.media()[-5:]] == [63] * 5


def test_red_with_one_block_is_rebuilt_with_two_toward_a_subscriber_at_high_loss() -> None:
    """Chrome's RED carries one redundant block; at 20 % loss the subscriber gets two
    (the frames before it), so a double loss needs no NACK."""
    a = Audio()
    a.send(3, red=True)  # clean: forwarded as is
    report_block(a.red, a.clock.now_ms, fraction_lost=0.2)
    a.red_sink.take()
    frames = []
    for _ in range(6):
        packet = a.pub.next(red=True, distance=1)
        frames.append(parse_red(parse_rtp(packet).payload)[-1].data)
        feed(a.track, 0, [packet], a.clock.advance(20))
    out = [parse_red(p.payload) for p in a.red_sink.take()]
    assert [blocks[-1].data for blocks in out] == frames
    assert [[b.data for b in blocks[:-1]] for blocks in out[2:]] == [frames[i - 2 : i] for i in range(2, 6)]
    assert a.red.red_added == 6
