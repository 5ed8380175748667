"""What the runner counts as a freeze, a concealment and a capacity, without a network.

A freeze is what a person sees: a gap between shown frames that is long for the
track's own frame rate (the W3C rule), or Chrome's own count; never an artefact of
when the runner happened to poll.
"""

from __future__ import annotations

from types import SimpleNamespace

from netem.rate import ConstantRate, MahimahiTrace, StepRate
from netem.tracegen import opportunities
from qa.measurement import FrameMeter, capacity_bps, capacity_over, freeze_threshold, percentile
from qa.participants import ChromiumParticipant
from qa.scenario import ParticipantSpec


def _frames(meter: FrameMeter, times: list[float]) -> None:
    for t in times:
        meter.on_frame(t)


def test_a_gap_counts_as_a_freeze_relative_to_the_tracks_own_frame_rate() -> None:
    fast = FrameMeter("video")
    fast.start_window(0.0)
    times = [k * 0.05 for k in range(40)]  # 20 fps
    _frames(fast, times + [times[-1] + 0.4] + [times[-1] + 0.4 + k * 0.05 for k in range(1, 10)])
    assert [round(g, 3) for _, g in fast.gaps] == [0.4]  # 400 ms at 20 fps is visible

    slow = FrameMeter("video")
    slow.start_window(0.0)
    times = [k * 0.2 for k in range(20)]  # 5 fps: a 550 ms gap is within max(3 x 200, 350)
    _frames(slow, times + [times[-1] + 0.55] + [times[-1] + 0.55 + k * 0.2 for k in range(1, 5)])
    assert slow.gaps == []
    assert round(freeze_threshold([0.2] * 10), 6) == 0.6
    assert round(freeze_threshold([0.03] * 10), 6) == 0.18


def test_a_polled_client_has_no_freezes_from_late_polls_only_its_own() -> None:
    m = FrameMeter("video", gaps_from_frames=False)
    m.start_window(0.0)
    now = 0.0
    for k in range(40):  # a steady 20 fps read by polls that come 0.5-1.3 s apart
        step = 0.5 if k % 3 else 1.3
        now += step
        m.add_frames(round(20 * step), now)
    assert m.gaps == [] and m.window_frames == sum(round(20 * (0.5 if k % 3 else 1.3))
                                                   for k in range(40))
    m.add_freeze(now - 0.8, 0.8)
    m.finish(now + 0.2)
    assert m.gaps == [(now - 0.8, 0.8)]
    stalled = FrameMeter("video", gaps_from_frames=False)
    stalled.start_window(0.0)
    stalled.add_frames(10, 1.0)
    stalled.finish(4.0)  # frames stopped and never came back: Chrome has not counted it yet
    assert stalled.gaps == [(1.0, 3.0)]


def _chromium(t0: float) -> ChromiumParticipant:
    ctx = SimpleNamespace(t0=t0, turn_passwords={}, options=SimpleNamespace(sample_interval_s=0.5))
    p = ChromiumParticipant("viewer", ParticipantSpec("viewer", "chromium", publish=()), ctx)
    p._chrome_prev = {}
    p._jitter_prev = {}
    return p


def test_chromium_freezes_and_concealment_come_from_chromes_own_counters() -> None:
    p = _chromium(t0=100.0)
    video = {"sid": "PA", "kind": "video", "framesDecoded": 50, "freezeCount": 1,
             "totalFreezesDuration": 0.9}
    audio = {"sid": "PA", "kind": "audio", "concealedSamples": 480, "totalSamplesReceived": 48_000,
             "concealmentEvents": 2}
    p._chrome_inbound([video, audio], 100.01)  # the t = 0 sample: baselines only
    p._chrome_inbound([{**video, "framesDecoded": 70}, {**audio, "totalSamplesReceived": 72_000}],
                      100.5)
    p._chrome_inbound([{**video, "framesDecoded": 75, "freezeCount": 2, "totalFreezesDuration": 1.6},
                       {**audio, "concealedSamples": 1440, "totalSamplesReceived": 96_000,
                        "concealmentEvents": 3}], 101.0)
    m = p.meters["PA/video"]
    assert m.window_frames == 25
    assert [(round(s, 2), round(g, 2)) for s, g in m.gaps] == [(100.3, 0.7)]
    concealed, received, events = (b - a for a, b in zip(*p.concealment["PA"], strict=True))
    assert (concealed, received, events) == (960, 48_000, 1)


def test_chromium_jitter_buffer_delays_are_per_kind_and_per_sample() -> None:
    p = _chromium(t0=0.0)

    def sample(video_s: float, video_n: int, audio_s: float, audio_n: int, audio_min_s: float = 0.0) -> None:
        p._chrome_inbound([
            {"sid": "PA", "kind": "video", "framesDecoded": video_n, "jitterBufferDelay": video_s,
             "jitterBufferEmittedCount": video_n},
            {"sid": "PA", "kind": "audio", "jitterBufferDelay": audio_s, "jitterBufferEmittedCount": audio_n,
             "jitterBufferMinimumDelay": audio_min_s},
        ], 0.5)

    # Chrome sums each emitted frame's (video) or sample's (audio) wait, in seconds
    sample(1.0, 20, 2_400.0, 24_000)  # since the track began: 50 ms video, 100 ms audio
    assert (p.jitter_buffer_ms, p.audio_jitter_buffer_ms) == (50.0, 100.0)
    sample(1.0 + 15 * 0.08, 35, 2_400.0 + 24_000 * 0.3, 48_000)  # this sample: 80 ms, 300 ms
    assert (round(p.jitter_buffer_ms, 3), round(p.audio_jitter_buffer_ms, 3)) == (80.0, 300.0)
    assert p.audio_jitter_target_ms is None  # a Chrome without jitterBufferMinimumDelay
    sample(2.2, 35, 9_600.0, 48_000)  # nothing new emitted: no figure
    assert (p.jitter_buffer_ms, p.audio_jitter_buffer_ms) == (None, None)


def test_chromium_audio_jitter_target_is_the_minimum_delay_per_emitted_sample() -> None:
    """After an outage Chrome's audio jitter buffer may aim for 2 s on network evidence
    alone (jitterBufferMinimumDelay, lip sync not included): the runner shows that aim."""
    p = _chromium(t0=0.0)

    def sample(minimum_s: float, emitted: int) -> None:
        p._chrome_inbound([{"sid": "PA", "kind": "audio", "jitterBufferDelay": 0.0,
                            "jitterBufferEmittedCount": emitted, "jitterBufferMinimumDelay": minimum_s}], 0.5)

    sample(24_000 * 0.1, 24_000)  # since the track began: 100 ms
    assert round(p.audio_jitter_target_ms, 3) == 100.0
    sample(24_000 * 0.1 + 24_000 * 2.0, 48_000)  # this sample: 2 s
    assert round(p.audio_jitter_target_ms, 3) == 2000.0


def test_an_audio_only_chromium_call_has_no_video_meter() -> None:
    p = _chromium(t0=0.0)
    audio = {"sid": "PA", "kind": "audio", "concealedSamples": 0, "totalSamplesReceived": 0}
    for k in range(4):
        p._chrome_inbound([{**audio, "totalSamplesReceived": 24_000 * k}], 0.01 + 0.5 * k)
    assert not [m for m in p.meters.values() if m.kind == "video"]
    assert p.concealment["PA"][1][1] == 72_000


def test_capacity_follows_the_links_rate_trace_and_steps() -> None:
    assert capacity_bps(ConstantRate(2e6), 0.0, 5.0, 5.5) == 2e6
    assert capacity_bps(None, 0.0, 5.0, 5.5) is None
    rates = [1.2e6] * 20 + [0.0] * 20 + [1.2e6] * 20  # 2 s, a 2 s outage, 2 s
    trace = MahimahiTrace(tuple(opportunities(rates)))
    since = 50.0
    assert abs(capacity_bps(trace, since, since + 0.5, since + 1.5) - 1.2e6) < 0.05e6
    assert capacity_bps(trace, since, since + 2.2, since + 3.8) == 0.0
    assert abs(capacity_bps(trace, since, since + 6.5, since + 7.5) - 1.2e6) < 0.05e6  # looped
    steps = StepRate(((0.0, 1e6), (1000.0, 3e6)))
    assert abs(capacity_bps(steps, 0.0, 0.5, 1.5) - 2e6) < 1e3
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == 5.0 and percentile([], 0.5) is None


def test_a_link_change_counts_from_when_it_happened_not_from_the_samples_start() -> None:
    """A sample covers the interval before it: the old rate until the change, the new one after."""
    rates = [1.2e6] * 20 + [0.0] * 20  # 2 s of link, then out
    history = [(0.0, ConstantRate(2.5e6)), (10.0, ConstantRate(0.3e6)), (20.0, MahimahiTrace(tuple(opportunities(rates))))]
    assert capacity_over(history, 9.5, 10.0) == 2.5e6
    assert abs(capacity_over(history, 9.75, 10.25) - 1.4e6) < 1.0  # type: ignore[operator]
    assert capacity_over(history, 10.0, 10.5) == 0.3e6
    assert abs(capacity_over(history, 19.5, 20.5) - 0.75e6) < 0.05e6  # type: ignore[operator]
    assert capacity_over(history, 22.5, 23.0) == 0.0  # the trace counted from its own start
    assert capacity_over([(0.0, None), (1.0, ConstantRate(1e6))], 0.5, 1.5) is None
    assert capacity_over(history, 5.0, 5.0) is None


def test_an_audio_only_listeners_loss_after_repair_is_its_audio_loss(tmp_path) -> None:
    """Loss after repair used to read 0% for an audio-only call (only video was tracked)."""
    from qa.context import RunOptions
    from qa.measurement import SeqTracker
    from qa.participants import Participant
    from qa.result import summarise
    from qa.runner import Runner
    from qa.scenario import load_scenario

    scenario = load_scenario({"duration": 4, "participants": [
        {"name": "talker", "publish": ["audio"], "subscribe": False},
        {"name": "ear", "publish": []}]})
    runner = Runner(scenario, RunOptions(out_dir=tmp_path, print_fn=None))
    ear = Participant("ear", scenario.participants[1], runner.ctx)
    ear.audio_tracker = SeqTracker()
    ear.meter("PA/TR", "audio")
    runner.t = [0.5 * k for k in range(9)]  # 0 .. 4 s
    for k in range(9):  # 25 packets per sample, every 10th never arrives
        for seq in range(25 * k, 25 * (k + 1)):
            if seq % 10 != 3:
                ear.audio_tracker.add(1234, seq)
        ear.audio_marks.append(ear.audio_tracker.snapshot())
    runner._residual_loss(ear)
    summary = summarise(ear, runner.t, 0.0, 4.0)
    assert summary["remote_video_tracks"] == 0 and summary["freeze_count"] == 0
    assert abs(summary["audio_loss_after_recovery"] - 0.1) < 0.01
    assert summary["loss_after_recovery"] == summary["audio_loss_after_recovery"]


def test_the_runners_own_stalls_are_measured_and_named() -> None:
    from qa.measurement import LoopLag

    lag = LoopLag()
    now = 10.0
    for _ in range(20):
        lag.woke(now)
        now += LoopLag.PERIOD_S + 0.002
    assert 1.0 < lag.take() < 3.0 and lag.stalls == []
    lag.woke(now + 0.6)  # a 600 ms stall
    assert round(lag.take()) == 602 and [round(ms) for _, ms in lag.stalls] == [602]
    assert lag.take() == 0.0
