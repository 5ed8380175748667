"""PacketSink on a PublishedTrack: fan-out beside DownTracks, SRs, keyframe requests, close."""

from __future__ import annotations

from media.routing.published_track import PublishedTrack
from media.routing.router import Router
from media.wire.rtp import RtpView, build_rtp, parse_rtp

from .test_routing import audio_track, subscribe, video_track


class RecordingSink:
    def __init__(self, wanted_layer: int = 0) -> None:
        self.wanted_layer = wanted_layer
        self.packets: list[tuple[int, int, int, bool]] = []
        self.reports: list[tuple[int, int, int]] = []
        self.closed = 0

    def on_packet(self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        self.packets.append((layer, view.seq, ext_seq, keyframe))

    def on_sender_report(self, layer: int, ntp: int, rtp_timestamp: int, now_ms: float) -> None:
        self.reports.append((layer, ntp, rtp_timestamp))

    def on_track_closed(self) -> None:
        self.closed += 1


class BrokenSink(RecordingSink):
    def on_packet(self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        raise RuntimeError("recorder bug")


def vp8_packet(ssrc: int, seq: int, *, keyframe: bool) -> bytes:
    # descriptor with S=1, partition 0; VP8 header P bit clear on a keyframe
    body = b"\x10" + (b"\x00\x00\x00\x9d\x01\x2a\xa0\x00\x78\x00" if keyframe else b"\x01\x00\x00")
    return build_rtp(payload_type=96, seq=seq, timestamp=seq * 3000, ssrc=ssrc, payload=body, marker=True)


def feed(track: PublishedTrack, index: int, packet: bytes, now_ms: float) -> None:
    track.layers[index].on_packet(parse_rtp(packet), now_ms, False)


def test_sink_sees_every_layer_with_keyframe_flag_and_forwarding_is_unchanged() -> None:
    track, _, _ = video_track(["q", "h"])
    down, out = subscribe(track)
    down.selector.set_target(0, 0.0)
    sink = RecordingSink()
    track.add_sink(sink)
    feed(track, 0, vp8_packet(1001, 10, keyframe=True), 0.0)
    feed(track, 1, vp8_packet(1002, 20, keyframe=False), 1.0)
    feed(track, 0, vp8_packet(1001, 10, keyframe=True), 2.0)  # duplicate: dropped before sinks
    assert [(layer, seq, key) for layer, seq, _, key in sink.packets] == [(0, 10, True), (1, 20, False)]
    assert sink.packets[0][2] > 0xFFFF  # the extended sequence number
    assert len(out.media()) == 1  # the DownTrack forwarded layer 0's keyframe as before
    track.remove_sink(sink)
    feed(track, 0, vp8_packet(1001, 11, keyframe=False), 3.0)
    assert len(sink.packets) == 2


def test_sink_keyframe_request_goes_to_the_publisher_coalesced() -> None:
    track, plis, _ = video_track(["q", "h"])
    track.request_keyframe(1, 0.0)
    track.request_keyframe(1, 10.0)  # within the coalescing window
    track.request_keyframe(7, 10.0)  # no such layer: ignored
    assert plis.plis == [1002]


def test_sender_reports_reach_sinks_and_close_notifies_once() -> None:
    track, _ = audio_track()
    sink = RecordingSink()
    track.add_sink(sink)
    track.layers[0].on_sender_report(0xE000_0000_8000_0000, 123456, 5.0)
    assert sink.reports == [(0, 0xE000_0000_8000_0000, 123456)]
    track.close()
    track.close()
    assert sink.closed == 1 and track.sinks == []


def test_a_failing_sink_is_counted_and_does_not_stop_others() -> None:
    track, _, stats = video_track()
    good = RecordingSink()
    track.add_sink(BrokenSink())
    track.add_sink(good)
    feed(track, 0, vp8_packet(1001, 5, keyframe=True), 0.0)
    assert stats.drops["sink_error"] == 1
    assert len(good.packets) == 1


def test_dynacast_keeps_the_layers_a_recording_sink_wants() -> None:
    def layers_after(sink: RecordingSink | None) -> dict[str, bool]:
        track, _, _ = video_track(["q", "h", "f"])
        router = Router(engine=None, name="room")  # type: ignore[arg-type]  # timers only
        router.add_track(track)
        if sink is not None:
            track.add_sink(sink)
        for now in (0.0, 600.0, 1200.0, 1800.0):
            router.on_timer(now)
        return router.publisher_layers[track.sid]

    assert layers_after(None) == {"q": True, "h": False, "f": False}  # nobody watches
    assert layers_after(RecordingSink(wanted_layer=2)) == {"q": True, "h": True, "f": True}
