"""Ferry's sender reports name capture instants, so a browser's lip sync lines up.

A forwarded stream's SR timestamp comes from the publisher's own SR (its capture
clock), carried through `RemoteClock` onto Ferry's clock and through the rewriter's
offset; time a packet spent in pacers does not move it.
"""

from __future__ import annotations

from aiortc.rtp import RtcpSrPacket

from media.rtp.ntp import ntp_from_unix
from media.rtp.remote_clock import WINDOW_MS, RemoteClock
from media.wire.rtcp import build_sr, parse_rtcp
from media.wire.rtp import build_rtp

from .fakes import OpusStream, Vp8Layer, opus_frame
from .router_setup import audio_viewer
from .test_routing import LAYER_SSRCS, TS_MASK, Simulcast, audio_track, feed, subscribe, video_track

UNIX0 = 1_700_000_000.0
NTP0 = ntp_from_unix(UNIX0)


def test_a_report_that_waited_in_a_queue_does_not_move_the_clock() -> None:
    clock = RemoteClock()
    # sent at NTP0 + k s; the first two took 20 ms to arrive, the third waited 300 ms more
    assert clock.on_sender_report(NTP0, 20.0) == 20.0
    assert clock.on_sender_report(ntp_from_unix(UNIX0 + 1), 1020.0) == 1020.0
    late = clock.on_sender_report(ntp_from_unix(UNIX0 + 2), 2320.0)
    assert abs(late - 2020.0) < 1e-3  # where the others put that instant, not its arrival


def test_the_clock_follows_a_stepped_sender_clock_within_the_window() -> None:
    clock = RemoteClock()
    clock.on_sender_report(NTP0, 20.0)
    stepped = UNIX0 + 1 - 5.0  # one second on, the sender's clock stepped back 5 s
    assert abs(clock.on_sender_report(ntp_from_unix(stepped), 1020.0) - (1020.0 - 5000.0)) < 1e-3
    later = 1020.0 + WINDOW_MS + 1.0  # the report from before the step has left the window
    at = clock.on_sender_report(ntp_from_unix(stepped + (later - 1020.0) / 1000.0), later)
    assert abs(at - later) < 1e-3


def test_forwarded_video_reports_the_capture_instant_not_the_send_time() -> None:
    track, _, _ = video_track()
    down, sink = subscribe(track)
    pub = Vp8Layer(0, LAYER_SSRCS[0], ts=5_000)
    # The publisher's SR: its frame timestamp 5000 was captured at Ferry time 1000.
    track.layers[0].on_sender_report(NTP0, 5_000, 1_010.0, 1_000.0)
    sent_at = []
    for k in range(10):  # frame k captured at 1000 + 33.33 k, forwarded 250 ms later (pacing)
        now = 1_000.0 + k * 100.0 / 3.0 + 250.0
        feed(track, 0, pub.frame(keyframe=k == 0), now)
        sent_at.append(now)
    out = sink.media()
    assert len(out) == 10
    first_out_ts = out[0].view.timestamp  # captured at 1000
    now = 2_000.0
    assert down.capture_timestamp(now) == (first_out_ts + 1_000 * 90) & TS_MASK
    # what the last sent packet alone says reads 250 ms late
    stale = down.stream.sender_report_info(now, 0).rtp_timestamp
    assert (down.capture_timestamp(now) - stale) & TS_MASK == 250 * 90


def test_after_a_switch_the_report_follows_the_new_layers_clock_and_offset() -> None:
    sc = Simulcast()
    # Every layer's SR names the same capture instant with its own timestamp.
    at = sc.clock.now_ms
    for pub, layer in zip(sc.pubs, sc.track.layers, strict=True):
        layer.on_sender_report(NTP0, pub.ts, at + 15.0, at)
    sc.down.selector.set_target(0, at)
    sc.tick(keyframes=(0,))
    before = sc.down.capture_timestamp(sc.clock.now_ms)
    sc.down.selector.set_target(2, sc.clock.now_ms)
    sc.tick(keyframes=(2,))
    out = sc.sink.media()
    assert out[-1].tag[0] == 2  # now forwarding f
    # f's frame (its second) was captured one frame interval after the SR instant; its output timestamp
    # and the report agree on that, whatever offset the switch chose
    assert sc.down.capture_timestamp(at + 100.0 / 3.0) == out[-1].view.timestamp
    assert before is not None


def test_audio_reports_from_the_send_time_until_the_publisher_sends_one() -> None:
    track, _ = audio_track(red_pt=None)
    down, sink = subscribe(track)
    pub = OpusStream(2001)
    assert down.capture_timestamp(0.0) is None  # nothing forwarded yet
    for k in range(5):
        feed(track, 0, [pub.next(red=False)], 100.0 + 20.0 * k)
    out = sink.media()
    assert len(out) == 5 and down.capture_timestamp(200.0) is None  # no SR yet
    assert down.stream.sender_report_info(200.0, 0).rtp_timestamp == (out[-1].view.timestamp + 20 * 48) & TS_MASK
    # the publisher's SR: its first frame (timestamp 48000) was captured at Ferry time 60
    track.layers[0].on_sender_report(NTP0, 48_000, 150.0, 60.0)
    assert down.capture_timestamp(200.0) == (out[0].view.timestamp + 140 * 48) & TS_MASK


def test_a_publishers_sr_reaches_the_viewers_sr_through_the_engine() -> None:
    """Publisher RTCP in, through the publisher's clock and the audio layer's anchor,
    to the SR Ferry sends the viewer: socket-free, the Router as a publish and a
    subscription leave it."""
    engine, sub, down = audio_viewer()
    pub = engine.router("room").participants["PA_pub"].publisher
    ssrc = 573889840  # the fixture offer's audio SSRC
    rtcp: list[bytes] = []
    sub.transport.send_rtcp = rtcp.append  # type: ignore[method-assign]
    wire: list[bytes] = []
    sub.transport.send_rtp = lambda packet, seq_at=0, seq=0: wire.append(packet)  # type: ignore[method-assign]
    t0 = engine.now_ms()
    # The publisher's SR: RTP 48000 is NTP0; it arrives 30 ms later, then its audio,
    # each packet 100 ms after capture (a pacer's worth of wait on the way).
    pub.on_rtcp(build_sr(ssrc, NTP0, 48_000, 0, 0), t0 + 30.0)
    for k in range(10):
        ts = 48_000 + 960 * k
        packet = build_rtp(payload_type=111, seq=100 + k, timestamp=ts, ssrc=ssrc, payload=opus_frame(k))
        pub.on_rtp(packet, t0 + 30.0 + 20.0 * k + 100.0)
    assert down.packets_sent == 10 and len(wire) == 10
    first_out = int.from_bytes(wire[0][4:8], "big")  # the forwarded RTP 48000: NTP0
    sub._send_sender_reports(t0 + 1_000.0)
    srs = [p for data in rtcp for p in parse_rtcp(data) if isinstance(p, RtcpSrPacket) and p.ssrc == down.ssrc]
    assert len(srs) == 1
    # NTP0 is t0 + 30 on Ferry's clock, 970 ms before the SR; the send times would say
    # 870 ms (its last packet left at t0 + 310 with RTP 48000 + 9 x 960)
    assert (srs[0].sender_info.rtp_timestamp - first_out) & TS_MASK == 970 * 48
