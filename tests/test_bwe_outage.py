"""The congestion window, outage detection and fast recovery of the send-side BWE (sans-I/O)."""

from __future__ import annotations

from media.bwe.estimator import OUTAGE_RECHECK_MS, OUTAGE_RECHECK_RATIO, GccEstimator
from media.bwe.in_flight import (
    MIN_WINDOW_BYTES,
    WINDOW_ACKED_RATIO,
    WINDOW_QUEUE_MS,
    InFlight,
    OutageTracker,
)
from media.bwe.pacer import CONGESTED_PACKET_INTERVAL_MS, OUTAGE_AUDIO_QUEUE_MS, Pacer
from media.bwe.probe import ProbeCluster
from media.engine import Engine, EngineConfig
from media.routing.down_track import TWCC_OFFSET
from media.routing.rewriter import StreamRewriter
from media.routing.subscriber import OUTAGE_RESUME_TS_SKIP_MS
from media.rtp.twcc import PacketResult
from media.wire.rtp import parse_rtp
from tests.router_setup import publish, subscribe


def test_in_flight_counts_until_feedback_covers_a_later_packet() -> None:
    f = InFlight()
    for seq in range(1, 6):
        f.on_sent(seq, 1000, float(seq))
    assert f.bytes == 5000
    # packets 1-3 reported (or their feedback was lost); the oldest left 49 ms ago
    assert f.on_feedback(3, 50.0) == 49.0
    assert f.bytes == 2000
    f.prune(10_000.0)  # never covered for longer than MAX_AGE_MS: no longer counted
    assert f.bytes == 0


def test_window_is_estimate_times_rtt_plus_queue_allowance_with_a_floor() -> None:
    assert InFlight.window_bytes(2_000_000, 50.0) == int(2_000_000 * (50.0 + WINDOW_QUEUE_MS) / 8000.0)
    assert InFlight.window_bytes(50_000, 50.0) == MIN_WINDOW_BYTES


def test_outage_is_silence_with_data_in_flight_not_an_idle_sender() -> None:
    f, o = InFlight(), OutageTracker(silence_ms=300.0)
    o.on_feedback(1000.0)
    assert not o.check(2000.0, f)  # nothing in flight: idle, not out
    f.on_sent(1, 1000, 1900.0)
    assert not o.check(2000.0, f)  # just resumed sending
    assert o.check(2300.0, f)  # 1.3 s without feedback, a packet out for 400 ms
    assert o.active and o.since_ms == 1000.0
    assert o.on_feedback(4000.0) == 3000.0
    assert not o.active


def test_packets_whose_feedback_was_lost_do_not_make_an_outage() -> None:
    """Only a packet sent after the last feedback can draw the next one (a receiver
    reports each packet once): silence about earlier packets is a lost feedback."""
    f, o = InFlight(), OutageTracker(silence_ms=300.0)
    for seq in range(1, 11):
        f.on_sent(seq, 1000, 900.0 + seq)
    o.on_feedback(1000.0)  # covers packets 1-5 (in_flight.on_feedback)
    f.on_feedback(5, 1000.0)
    # the feedback for 6-10 is lost and the window is full: nothing else leaves
    assert not o.check(1200.0, f)
    assert not o.check(1500.0, f)  # 500 ms of silence, but about packets sent before it
    f.on_sent(11, 200, 1500.0)  # a packet past the full window
    assert not o.check(1510.0, f)
    assert not o.check(1790.0, f)
    assert o.check(1810.0, f)  # it, too, unanswered for over 300 ms: the link is out
    assert o.since_ms == 1000.0


def test_a_receiver_that_feeds_back_seldom_is_not_out_between_feedbacks() -> None:
    """Feedback every 200 ms: 300 ms without it is one late feedback, not an outage."""
    est = GccEstimator(start_bps=300_000)
    seq, t = 0, 0.0
    while t < 3000.0:
        batch = []
        for _ in range(5):
            seq += 1
            est.on_packet_sent(seq, 1000, t)
            batch.append(PacketResult(seq, t, t + 25.0, 1000))
            t += 40.0
        est.on_packet_results(batch, t)
        est.congestion_window_bytes(t)
    assert est.outage.silence_ms == 600.0
    seq += 1
    est.on_packet_sent(seq, 1000, t)
    assert est.congestion_window_bytes(t + 450.0) is not None and not est.outage.active
    est.congestion_window_bytes(t + 650.0)
    assert est.outage.active


def test_pacer_holds_media_while_the_window_is_full_but_lets_probes_out() -> None:
    p = Pacer(1_000_000)
    assert p.try_send_now(100, "audio", 0.0)
    p.set_window(10_000, 10_000)
    p.enqueue("a", 100, "audio", 0.0)
    p.enqueue("v", 1000, "video", 0.0)
    assert p.congested
    assert not p.try_send_now(100, "audio", 0.0)
    assert p.pop(10.0) == []
    assert p.next_send_time(10.0) == CONGESTED_PACKET_INTERVAL_MS  # not a busy loop
    p.start_probe(ProbeCluster.make(1, 1_000_000, 10.0), 10.0)
    assert [x.probe_id for x in p.pop(10.0)] == [1]
    p.set_window(10_000, 0)
    kinds = [x.kind for x in p.pop(20.0)]
    assert "audio" in kinds


def test_pacer_drops_audio_that_waited_out_an_outage() -> None:
    p = Pacer(1_000_000, max_audio_queue_ms=300.0)
    p.set_window(6000, 6000)
    for t in range(0, 1000, 20):
        p.enqueue(t, 100, "audio", float(t))
    p.set_window(6000, 0)
    sent = [x.packet for x in p.pop(1000.0)]
    assert sent and min(sent) >= 700 and p.dropped["audio"] > 0


def _feed_steady(est: GccEstimator, start_ms: float, end_ms: float, seq: int, rate_bps: float) -> int:
    """Packets of 1000 B at ``rate_bps`` over an uncongested 25 ms path, fed back every 50 ms."""
    gap = 1000 * 8000.0 / rate_bps
    t = start_ms
    batch: list[PacketResult] = []
    next_fb = start_ms + 50.0
    while t < end_ms:
        seq += 1
        est.on_packet_sent(seq, 1000, t)
        batch.append(PacketResult(seq, t, t + 25.0, 1000))
        t += gap
        if t >= next_fb:
            est.on_rtt(60.0, t)
            est.on_packet_results(batch, t)
            est.congestion_window_bytes(t)
            batch = []
            next_fb += 50.0
    return seq


def _send_into_outage(est: GccEstimator, seq: int, window: int) -> list[tuple[int, float]]:
    """From 5000 ms, 1000 B packets (seq after ``seq``) every 10 ms until ``window`` is
    in flight, then nothing comes back: at 5400 ms the link is out. Returns (seq, sent)."""
    sent: list[tuple[int, float]] = []
    t = 5000.0
    while est.in_flight.bytes < window:
        seq += 1
        est.on_packet_sent(seq, 1000, t)
        sent.append((seq, t))
        t += 10.0
    est.congestion_window_bytes(5400.0)
    assert est.outage.active
    return sent


def test_an_outage_neither_crashes_the_estimate_nor_fills_the_window() -> None:
    """2 s without any delivery: the packets that waited it out come back with seconds
    of delay and the tail-dropped ones as lost. That is not congestion: the estimate
    stays, and a probe toward the pre-outage rate goes out at once if it fell."""
    est = GccEstimator(start_bps=1_000_000)
    est.set_desired_bps(2_500_000)
    seq = _feed_steady(est, 0.0, 5000.0, 0, 800_000)
    before = est.estimate_bps(5000.0)
    window = est.congestion_window_bytes(5000.0)
    assert window is not None and window < 50_000
    # the outage: packets go out until the window is full, then nothing comes back
    sent = _send_into_outage(est, seq, window)
    # back at 7000: the first half waited out the outage, the rest was tail-dropped
    half = len(sent) // 2
    results = [PacketResult(s, st, 7000.0 + i * 10.0, 1000) for i, (s, st) in enumerate(sent[:half])]
    results += [PacketResult(s, st, None, 1000) for s, st in sent[half:]]
    est.on_packet_results(results, 7050.0)
    assert not est.outage.active
    assert est.estimate_bps(7050.0) >= 0.9 * before
    assert est.loss_based.rate_bps is None or est.loss_based.rate_bps >= 0.9 * before


def test_no_probe_goes_into_a_link_that_is_out_and_one_goes_when_it_returns() -> None:
    """A probe sent while the link is out waits in the bottleneck for the link's return
    and measures only that wait; the periodic and hurry probes are due there, not sent."""
    est = GccEstimator(start_bps=1_000_000)
    est.set_desired_bps(2_500_000)
    seq = _feed_steady(est, 0.0, 5000.0, 0, 800_000)
    while (done := est.next_probe(5000.0)) is not None:  # the start-up probes, answered
        est.probe_controller.on_result(done.id, None, est.estimate_bps(5000.0), 5000.0)
    window = est.congestion_window_bytes(5000.0)
    assert window is not None
    sent = _send_into_outage(est, seq, window)
    # 3 s out: well past the periodic probe interval (and the hurry one, 1 s)
    for now in range(5400, 8400, 50):
        est.congestion_window_bytes(float(now))
        assert est.next_probe(float(now)) is None, now
    results = [PacketResult(s, st, 8400.0 + i * 10.0, 1000) for i, (s, st) in enumerate(sent)]
    est.on_packet_results(results, 8450.0)
    assert not est.outage.active
    cluster = est.next_probe(8450.0)
    assert cluster is not None and cluster.bitrate_bps >= 700_000


def test_pacer_pushback_shrinks_what_is_produced_as_its_backlog_ages() -> None:
    p = Pacer(1_000_000)
    assert p.pushback(0.0) == 1.0
    p.set_window(6000, 6000)  # window full: video waits
    p.enqueue("v", 1000, "video", 0.0)
    assert p.pushback(100.0) == 0.75
    assert p.pushback(400.0) == 0.0  # video stops rather than arriving late


def test_a_full_window_still_lets_one_packet_out_per_interval_to_draw_feedback() -> None:
    """The feedback for the last packets in flight is lost: the receiver only sends
    feedback for packets it gets, so a sender that waits for it with nothing leaving
    would hold its window shut until those packets age out (seconds of frozen video)."""
    p = Pacer(1_000_000)
    assert p.try_send_now(100, "audio", 0.0)
    p.set_window(6000, 6000)
    p.enqueue("v1", 1000, "video", 5.0)
    p.enqueue("v2", 1000, "video", 6.0)
    assert p.pop(100.0) == []
    assert p.next_send_time(100.0) == CONGESTED_PACKET_INTERVAL_MS
    assert [x.packet for x in p.pop(CONGESTED_PACKET_INTERVAL_MS)] == ["v1"]
    assert p.pop(CONGESTED_PACKET_INTERVAL_MS + 50.0) == []
    assert [x.packet for x in p.pop(2 * CONGESTED_PACKET_INTERVAL_MS)] == ["v2"]
    # nothing queued: a small padding packet goes (it only has to draw feedback) ...
    sent = p.pop(3 * CONGESTED_PACKET_INTERVAL_MS, lambda size: b"p" * size)
    assert [(x.kind, x.size) for x in sent] == [("padding", 200)]
    assert p.congested_sends == 3
    # ... and with no way to make one, the timer still waits an interval, never spins
    assert p.pop(4 * CONGESTED_PACKET_INTERVAL_MS, lambda size: None) == []
    assert p.next_send_time(4 * CONGESTED_PACKET_INTERVAL_MS + 1.0) == 5 * CONGESTED_PACKET_INTERVAL_MS


def test_where_feedback_gets_lost_an_overdue_feedback_is_redrawn_with_small_padding() -> None:
    """A full window and no feedback for a round trip plus two feedback intervals, on a
    link that has lost feedback: a small packet draws the next one well before the
    200 ms trickle, and again each wait while none comes."""
    pad = lambda size: b"p" * size  # noqa: E731
    p = Pacer(1_000_000)
    assert p.try_send_now(100, "audio", 1000.0)
    p.set_window(6000, 6000, last_feedback_ms=1000.0, feedback_wait_ms=110.0)
    p.enqueue("v1", 1000, "video", 1000.0)
    assert p.pop(1100.0, pad) == []
    assert p.next_send_time(1100.0) == 1110.0
    sent = p.pop(1110.0, pad)
    assert [(x.kind, x.size) for x in sent] == [("padding", 200)]  # not the 1000 B video
    assert p.next_send_time(1111.0) == 1220.0  # that one's feedback is lost too
    assert [x.kind for x in p.pop(1220.0, pad)] == ["padding"]
    # the last trickle was 200 ms ago: the queued video goes, as without feedback loss
    p.set_window(6000, 6000, last_feedback_ms=1000.0, feedback_wait_ms=None)
    assert p.pop(1400.0, pad) == []
    assert [x.packet for x in p.pop(1420.0, pad)] == ["v1"]


def test_where_feedback_gets_lost_sparse_traffic_redraws_it_too() -> None:
    """Video paused, no audio: the one packet in flight lost its feedback, and nothing
    else would ever draw the next one before the silence reads as an outage."""
    pad = lambda size: b"p" * size  # noqa: E731
    p = Pacer(1_000_000)
    p.set_window(20_000, 1200, last_feedback_ms=1000.0, feedback_wait_ms=110.0)
    assert not p.congested
    assert p.next_send_time(1000.0) == 1110.0
    assert [(x.kind, x.size) for x in p.pop(1110.0, pad)] == [("padding", 200)]
    assert p.redraws == 1
    p.set_window(20_000, 0, last_feedback_ms=1160.0, feedback_wait_ms=110.0)  # answered
    assert p.next_send_time(1200.0) is None and p.pop(1400.0, pad) == []


def test_feedback_count_gaps_count_lost_feedback_for_ten_seconds() -> None:
    o = OutageTracker()
    for count in (250, 251, 252, 253, 254, 255, 0, 1):  # wraps at 8 bits
        o.on_feedback_count(count, 1000.0)
    assert o.feedback_lost == 0 and not o.losing_feedback(1000.0)
    o.on_feedback_count(3, 2000.0)  # 2 never came
    o.on_feedback_count(2, 2010.0)  # ... or came late: a reorder is not a second loss
    assert o.feedback_lost == 1
    assert o.losing_feedback(11_999.0) and not o.losing_feedback(12_001.0)


def test_where_feedback_gets_lost_an_outage_needs_silence_over_several_redraws() -> None:
    """At 10 % loss a redraw or its feedback is lost one time in five: three unanswered
    redraws (one every 160 ms) happen by chance under 1 % of the time, and the fourth's
    answer is due by then. Without feedback loss, or with no redraws, 300 ms; never
    over a second."""
    o = OutageTracker(silence_ms=300.0)
    assert o.required_silence_ms(160.0) == 300.0
    count = 0
    for i in range(60):
        count += 2 if i % 9 == 0 else 1  # one lost in ten
        o.on_feedback_count(count, 1000.0 + 50.0 * i)
    assert 0.09 < o.feedback_loss() < 0.12
    assert o.required_silence_ms(160.0) == 4 * 160.0
    assert o.required_silence_ms(None) == 300.0
    assert o.required_silence_ms(750.0) == 1000.0  # a long path: a second at most
    for i in range(64):  # the return path stops losing feedback
        count += 1
        o.on_feedback_count(count, 5000.0 + 50.0 * i)
    assert o.feedback_loss() == 0.0 and o.required_silence_ms(160.0) == 300.0


def test_the_estimator_redraws_feedback_only_where_feedback_gets_lost() -> None:
    est = GccEstimator(start_bps=1_000_000)
    seq = _feed_steady(est, 0.0, 2000.0, 0, 800_000)
    assert seq > 0 and est.feedback_wait_ms(2000.0) is None  # a full window: slow link
    est.outage.on_feedback_count(0, 2000.0)
    est.outage.on_feedback_count(2, 2050.0)
    wait = est.feedback_wait_ms(2050.0)
    assert wait is not None and 100.0 <= wait <= 300.0


def test_during_an_outage_only_padding_leaves_and_queued_audio_is_kept_briefly() -> None:
    """What is sent into a dead link reaches the receiver late, in one burst: Chrome's
    audio jitter buffer plays every packet of it (that much delay, shed over seconds),
    and late video frames skew its playout clock. Padding only has to draw feedback."""
    p = Pacer(1_000_000)
    assert p.try_send_now(100, "audio", 0.0)
    p.set_window(10_000, 100, outage=True)  # far from full, but the link is out
    assert p.congested and not p.try_send_now(100, "audio", 10.0)
    p.enqueue("a1", 100, "audio", 10.0)
    p.enqueue("v1", 1000, "video", 10.0)
    sent = p.pop(CONGESTED_PACKET_INTERVAL_MS, lambda size: b"p" * size)
    assert [(x.kind, x.size) for x in sent] == [("padding", 200)]
    p.enqueue("a2", 100, "audio", 250.0)
    assert p.dropped["audio"] == 1 and p.queued_packets == 2  # a1 outlived OUTAGE_AUDIO_QUEUE_MS
    # feedback is back: the window holds again, and fresh audio and video go
    p.set_window(10_000, 0)
    assert [x.packet for x in p.pop(250.0 + OUTAGE_AUDIO_QUEUE_MS / 2)] == ["a2", "v1"]


def test_held_audio_is_dropped_until_the_hold_ends() -> None:
    p = Pacer(1_000_000)
    p.hold_audio(100.0)
    assert not p.try_send_now(100, "audio", 50.0)
    p.enqueue("a1", 100, "audio", 50.0)
    assert p.dropped["audio"] == 1 and p.queued_packets == 0
    p.enqueue("v1", 1000, "video", 50.0)  # only audio is held
    assert p.queued_packets == 1
    p.enqueue("a2", 100, "audio", 100.0)
    assert p.dropped["audio"] == 1 and p.queued_packets == 2


def test_window_follows_what_the_receiver_got_when_it_falls_short_of_the_estimate() -> None:
    """A fade: the estimate is still 800 kbit/s, the last 500 ms delivered 200 kbit/s.
    Sized on the estimate, the window would hold ~4x its round trip of queue."""
    est = GccEstimator(start_bps=1_000_000)
    seq = _feed_steady(est, 0.0, 5000.0, 0, 800_000)
    estimate = est.estimate_bps(5000.0)
    wide = est.congestion_window_bytes(5000.0)
    assert wide is not None and wide > InFlight.window_bytes(0.9 * estimate, 0.0)
    _feed_steady(est, 5000.0, 5600.0, seq, 200_000)
    narrow = est.congestion_window_bytes(5600.0)
    assert est.estimate_bps(5600.0) > 2 * WINDOW_ACKED_RATIO * 200_000  # not cut (yet)
    assert narrow is not None and narrow <= wide * (WINDOW_ACKED_RATIO * 200_000 * 1.1) / estimate


def test_a_second_probe_follows_the_outage_probe_once_the_flush_is_through() -> None:
    est = GccEstimator(start_bps=1_000_000)
    est.set_desired_bps(2_500_000)
    seq = _feed_steady(est, 0.0, 5000.0, 0, 800_000)
    est.next_probe(5000.0)  # whatever was pending
    for t in range(5000, 5400, 10):
        seq += 1
        est.on_packet_sent(seq, 1000, float(t))
    est.congestion_window_bytes(5700.0)
    assert est.outage.active
    est.on_packet_results([PacketResult(seq, 5390.0, 7000.0, 1000)], 7010.0)
    assert not est.outage.active
    est.next_probe(7010.0)  # the outage probe
    seq += 1
    est.on_packet_sent(seq, 1000, 7020.0)
    est.on_packet_results([PacketResult(seq, 7020.0, 7100.0, 1000)], 7150.0)  # the link answers
    assert est.next_probe(7010.0 + OUTAGE_RECHECK_MS - 1) is None
    second = est.next_probe(7010.0 + OUTAGE_RECHECK_MS)
    assert second is not None
    assert second.bitrate_bps >= OUTAGE_RECHECK_RATIO * est.estimate_bps(7300.0) - 1


def test_the_second_probe_waits_while_the_link_is_silent_again() -> None:
    """The link came back for a moment and went out again: the second probe would
    wait out that outage in the bottleneck, so it goes once feedback is back."""
    est = GccEstimator(start_bps=1_000_000)
    est.set_desired_bps(2_500_000)
    seq = _feed_steady(est, 0.0, 5000.0, 0, 800_000)
    est.next_probe(5000.0)
    for t in range(5000, 5400, 10):
        seq += 1
        est.on_packet_sent(seq, 1000, float(t))
    est.congestion_window_bytes(5700.0)
    est.on_packet_results([PacketResult(seq, 5390.0, 7000.0, 1000)], 7010.0)
    est.next_probe(7010.0)  # the outage probe
    assert est.next_probe(7010.0 + OUTAGE_RECHECK_MS) is None  # nothing heard since 7010
    seq += 1
    est.on_packet_sent(seq, 1000, 7300.0)
    est.on_packet_results([PacketResult(seq, 7300.0, 7400.0, 1000)], 7450.0)
    assert est.next_probe(7450.0) is not None


def test_window_of_frame_by_frame_video_holds_a_feedback_interval() -> None:
    """Video leaves in frames (15 per second here), the receiver reports on a 50 ms
    cadence over a 2 ms path: a feedback often covers only a frame sent just before
    it, so the least send-to-feedback time is a few ms. The window must still hold
    what is sent between two feedbacks plus its queue allowance, or every keyframe
    waits behind it (and the pacer's pushback sheds the video)."""
    est = GccEstimator(start_bps=1_000_000)
    seq = 0
    batch: list[PacketResult] = []
    last_fb: float | None = None
    frame_ms = 0.0
    t = 0.0
    while t < 5000.0:
        t += 0.5
        if t >= frame_ms:  # a 6-packet frame at once
            for _ in range(6):
                seq += 1
                est.on_packet_sent(seq, 1000, t)
                batch.append(PacketResult(seq, t, t + 1.0, 1000))
            frame_ms += 1000.0 / 15
        # The receiver's cadence: 50 ms after the last feedback, or after the first
        # arrival when nothing came for longer (media.rtp.twcc.TwccRecorder).
        if batch:
            due = batch[0].send_ms + 51.0 if last_fb is None or batch[0].send_ms + 1.0 - last_fb >= 50.0 else last_fb + 50.0
            if t >= due:
                est.on_rtt(2.0, t)
                est.on_packet_results(batch, t)
                batch = []
                last_fb = t
    base_ack = est._base_ack.get()
    assert base_ack is not None and base_ack < 10.0  # the premise
    rate = min(est.estimate_bps(t), WINDOW_ACKED_RATIO * (est.acked.bitrate_bps() or 0.0))
    window = est.congestion_window_bytes(t)
    assert window is not None and window >= InFlight.window_bytes(rate, 45.0)


def test_an_outage_pauses_the_viewers_video_and_its_end_resumes_it_on_a_keyframe() -> None:
    """Video forwarded into an outage only arrives seconds late, after the frames it
    references were shed; the viewer gets the next keyframe instead, asked for at once."""
    engine = Engine(EngineConfig(port=0))
    router = engine.router("room")
    viewer = router.add_participant("PA_viewer")
    video = next(t for t in publish(router.add_participant("PA_pub")) if t.kind == "video")
    subscribe(viewer, video, 0)
    sub = viewer.subscriber
    sub.schedule = None  # no pacer timer: this test drains by hand, without a loop
    est, selector = sub.estimator, sub.down_tracks[video.sid].selector
    assert est is not None and sub.pacer is not None
    sub.allocate(0.0)
    assert not selector.paused
    est.outage.since_ms = 1000.0  # feedback silent with data in flight (OutageTracker)
    est.in_flight.on_sent(1, 1000, 1100.0)  # the oldest packet the outage holds ...
    sub._last_audio_ms = 1400.0  # ... and the last audio sent into it: 300 ms of audio
    sub.pacer.enqueue(b"v" * 100, 100, "video", 1500.0)
    sub._drain(1500.0)
    assert selector.paused and sub.pacer.congested
    asked: list[tuple[int, float]] = []
    video.request_keyframe = lambda layer, now_ms: asked.append((layer, now_ms))  # type: ignore[method-assign]
    est.outage.since_ms = None  # feedback is back
    est.rtt_ms = 100.0
    est.in_flight.on_feedback(1, 3500.0)
    sub._drain(3500.0)
    assert not selector.paused and not sub.pacer.congested
    assert asked == [(selector.target, 3500.0)]
    # the receiver plays those 300 ms from the link's return, a round trip before now:
    # new audio waits for the last 200 of them
    sub.pacer.enqueue(b"a" * 100, 100, "audio", 3690.0)
    sub.pacer.enqueue(b"a" * 100, 100, "audio", 3710.0)
    assert sub.pacer.dropped["audio"] == 1 and sub.pacer.queued_packets == 1
    # ... and its timestamps jump past the 10 s that make Chrome restart its video timing
    assert sub.down_tracks[video.sid].rewriter.ts_skip == OUTAGE_RESUME_TS_SKIP_MS * 90


def test_a_skip_ahead_advances_the_next_start_once_beyond_the_wall_clock_gap() -> None:
    rw = StreamRewriter(90_000, first_seq=99, first_ts=1000, rtx_seq=0)
    rw.start(500, 7777, None, 0.0)
    assert rw.ts_offset == (1000 - 7777) & 0xFFFFFFFF  # the first packet continues first_ts
    rw.last_ts, rw.last_ms = 1000, 100.0
    rw.skip_ahead(15_000.0)
    rw.start(900, 7777, None, 2100.0)  # 2 s later, resumed
    assert (7777 + rw.ts_offset) & 0xFFFFFFFF == 1000 + (2000 + 15_000) * 90
    rw.start(1000, 7777, None, 2100.0)  # the next start: the wall-clock gap only
    assert (7777 + rw.ts_offset) & 0xFFFFFFFF == 1000 + 2000 * 90


def test_what_leaves_during_an_outage_is_small_padding_on_the_rtx_ssrc() -> None:
    """Each packet sent into a dead link waits in the bottleneck and delays everything
    after the link returns: the ones that only draw feedback are padding, not a
    full-size RTX copy; and the transport stops answering checks on that path."""
    engine = Engine(EngineConfig(port=0))
    router = engine.router("room")
    viewer = router.add_participant("PA_viewer")
    video = next(t for t in publish(router.add_participant("PA_pub")) if t.kind == "video")
    subscribe(viewer, video, 0)
    sub = viewer.subscriber
    sub.schedule = None
    down = sub.down_tracks[video.sid]
    est = sub.estimator
    assert est is not None and sub.pacer is not None and down.rtx_ssrc is not None
    sent: list[tuple[bytes, int, int]] = []
    sub.transport.send_rtp = lambda packet, seq_at=0, seq=0: sent.append((packet, seq_at, seq))  # type: ignore[method-assign]
    est.outage.since_ms = 1000.0
    est.in_flight.on_sent(1, 1000, 1100.0)
    sub._drain(1500.0)
    sub._drain(1500.0 + CONGESTED_PACKET_INTERVAL_MS)
    assert sent, "one packet leaves per interval to draw feedback"
    packet, seq_at, seq = sent[-1]
    view = parse_rtp(packet)
    assert view.ssrc == down.rtx_ssrc and packet[0] & 0x20 and view.payload_end == view.payload_start
    assert len(packet) <= 20 + 255 and seq_at == TWCC_OFFSET and seq == sub._twcc_seq
    assert sub.transport._link_out_since == 1500.0
    est.outage.since_ms = None
    est.in_flight.on_feedback(1, 3500.0)
    sub._drain(3500.0)
    assert sub.transport._link_out_since is None


def test_audio_after_an_outage_waits_for_what_the_receiver_still_plays() -> None:
    """300 ms of audio went into the outage; the receiver has played 100 ms of it a
    round trip before its feedback came: new audio is dropped for the other 200."""
    p = Pacer(1_000_000)
    p.on_outage(True, 1500.0, oldest_send_ms=1100.0, last_audio_ms=1400.0, rtt_ms=None)
    p.on_outage(False, 3500.0, oldest_send_ms=None, last_audio_ms=1400.0, rtt_ms=100.0)
    p.enqueue("a1", 100, "audio", 3690.0)
    p.enqueue("a2", 100, "audio", 3710.0)
    assert p.dropped["audio"] == 1 and [x.packet for x in p.pop(3710.0)] == ["a2"]
    # no audio sent into the outage: nothing to wait for
    p.on_outage(True, 5000.0, oldest_send_ms=4900.0, last_audio_ms=1400.0, rtt_ms=None)
    p.on_outage(False, 6000.0, oldest_send_ms=None, last_audio_ms=1400.0, rtt_ms=100.0)
    p.enqueue("a3", 100, "audio", 6000.0)
    assert p.dropped["audio"] == 1 and p.queued_packets == 1
