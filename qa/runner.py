"""Run a scenario: Ferry + netem's impairing TURN relay + real WebRTC clients -> a report.

Timeline: Ferry (in-process on free ports, unless ``url`` is given) and the relay
start, every participant joins and publishes (bounded by ``connect_timeout``), then
``t = 0``: the schedule runs and every ``sample_interval`` (500 ms) each participant
is sampled (``qa.measurement``: bitrate, loss before/after recovery, RTT, jitter,
decoded fps, freezes, and Ferry's selected layer and estimate, read through
``Engine.subscriber_stats`` when the server is in-process). After ``duration`` the run
stops, metrics are summarised and expectations checked (``qa.result``) and
``qa.report`` writes ``report.json``, ``report.html`` and the PNG plots.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import statistics
import time
from typing import Any

from netem.profiles import Profile
from netem.turn import TurnRelay
from qa.context import RunContext, RunOptions
from qa.measurement import RECOVERY_GRACE_S, LoopLag, capacity_over, fraction, server_sample
from qa.participants import (
    ChromiumParticipant,
    FerryParticipant,
    LiteParticipant,
    Participant,
    lite_available,
)
from qa.report import write_report
from qa.result import RunResult, check_expectations, run_groups, summarise
from qa.scenario import ParticipantSpec, Scenario

__all__ = ["RunOptions", "RunResult", "Runner", "run_scenario"]

logger = logging.getLogger("ferry.qa.runner")


class Runner:
    """Drives one scenario run; see the module docstring for the timeline."""

    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        if options.duration_s is not None:
            scenario = scenario.with_duration(options.duration_s)
        self.scenario = scenario
        self.options = options
        self.ctx = RunContext(scenario, options)
        self.participants: list[Participant] = []
        self.t: list[float] = []
        self.events: list[dict[str, Any]] = []
        self._own_server: Any = None
        self._instances: list[tuple[str, ParticipantSpec]] = []  # (identity, spec) that run
        self._end: float | None = None  # when measuring stopped (monotonic s)
        self.lag = LoopLag()
        self.lag_ms: list[float | None] = []  # the runner's own loop lag, per sample

    def say(self, text: str) -> None:
        if self.options.print_fn is not None:
            self.options.print_fn(text)

    # -- setup
    async def _start_server(self) -> None:
        ctx = self.ctx
        if self.options.url:
            ctx.ws_url = self.options.url
            base = self.options.url.replace("ws://", "http://").replace("wss://", "https://")
            ctx.http_url = base.rsplit("/ws", 1)[0]
            ctx.api_key = os.environ.get("FERRY_API_KEY", "")
            ctx.api_secret = os.environ.get("FERRY_API_SECRET", "")
            if not ctx.api_key or not ctx.api_secret:
                raise RuntimeError("--url needs FERRY_API_KEY and FERRY_API_SECRET to mint tokens")
            ctx.notes.append("external Ferry: no layer/estimate figures (server not in-process)")
            return
        from signaling.app import FerryServer
        from signaling.config import Config

        # Scenarios measure forwarding under a network profile; live captions would put a
        # speech recognizer on every audio track's CPU.
        server = FerryServer(Config(host="127.0.0.1", http_port=0, media_port=0, quic_port=0,
                                    room_empty_timeout_s=5.0, captions="off"))
        await server.start()
        self._own_server = ctx.server = server
        ctx.ws_url, ctx.http_url = server.ws_url, server.http_url
        ctx.api_key, ctx.api_secret = server.api_key, server.api_secret

    async def _start_relay(self) -> None:
        profiles: dict[str, Profile] = {}
        self._instances = []
        for spec in self.scenario.participants:
            spec = self._resolve_client(spec)
            for name in spec.instance_names():
                profiles[f"sc-{name}"] = spec.link
                self._instances.append((name, spec))
        seed = self.options.seed if self.options.seed is not None else self.scenario.seed
        # One random password per participant, for its own username only (no shared one).
        self.ctx.turn_passwords = {name: secrets.token_urlsafe(12) for name, _ in self._instances}
        users = {f"sc-{name}:{name}": pw for name, pw in self.ctx.turn_passwords.items()}
        relay = TurnRelay("127.0.0.1", 0, profiles=profiles, users=users, seed=seed,
                          allowed_peers=await self._ferry_media_peers(),
                          default_profile="unimpaired")
        host, port = await relay.start()
        self.ctx.relay = relay
        self.ctx.turn_url = f"turn:{host}:{port}"

    async def _ferry_media_peers(self) -> list[str]:
        """What the relay may reach: the in-process Ferry's media addresses, or for an
        external Ferry ``relay_peers`` (default: every port of its URL's host)."""
        server = self.ctx.server
        if server is not None:
            return [f"{ip}:{server.engine.port}" for ip in server.config.announce_ips]
        if self.options.relay_peers:
            return list(self.options.relay_peers)
        from urllib.parse import urlsplit

        host = urlsplit(self.ctx.ws_url).hostname or "127.0.0.1"
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            return sorted({str(info[4][0]) for info in infos if ":" not in str(info[4][0])})

    def _resolve_client(self, spec: ParticipantSpec) -> ParticipantSpec:
        """Apply ``fallback`` when the wanted client kind is not available here."""
        missing = (spec.client == "lite" and not lite_available()) or (
            spec.client == "chromium" and not os.path.exists(self.options.chromium_path))
        if not missing:
            return spec
        fb = spec.fallback or {"client": "ferry"}
        client = str(fb.get("client", "ferry"))
        count = int(fb.get("count", spec.count))
        note = (f"{spec.name}: {spec.client} client not available here; using {client} x{count}"
                f" instead of {spec.client} x{spec.count}")
        if note not in self.ctx.notes:
            self.ctx.notes.append(note)
            self.say(f"note: {note}")
        return ParticipantSpec(spec.name, client, count, spec.publish, spec.subscribe, spec.link,
                               spec.link_label, list(spec.schedule), {})

    async def _start_participants(self) -> None:
        kinds: dict[str, type[Participant]] = {
            "ferry": FerryParticipant, "chromium": ChromiumParticipant, "lite": LiteParticipant}
        self.participants = [kinds[spec.client](name, spec, self.ctx)
                             for name, spec in self._instances]
        # Publishers first so subscribers' first offers already carry their tracks.
        order = sorted(self.participants, key=lambda p: not p.publishes)
        sem = asyncio.Semaphore(6)  # bounded concurrency: DTLS handshakes are CPU-heavy

        async def start(p: Participant) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(p.start(), self.options.connect_timeout_s + 5.0)
                except Exception as exc:  # noqa: BLE001 - one bad client must not end the run
                    p.error = f"{type(exc).__name__}: {exc}"
                    self.say(f"participant {p.name} failed to start: {p.error}")

        await asyncio.gather(*(start(p) for p in order))

    # -- sampling
    async def _watch_loop(self) -> None:
        while True:
            self.lag.woke(time.monotonic())
            await asyncio.sleep(LoopLag.PERIOD_S)

    async def _sample(self, now: float) -> None:
        t = now - (self.ctx.t0 or now)
        self.t.append(round(t, 3))
        self.lag_ms.append(round(self.lag.take(), 1) if len(self.t) > 1 else None)
        dt = self.options.sample_interval_s
        for p in self.participants:
            cs: dict[str, Any] = {}
            if p.error is None:
                try:
                    cs = await asyncio.wait_for(p.client_sample(), 3.0)
                except Exception as exc:  # noqa: BLE001 - record a gap, keep sampling
                    logger.debug("sample of %s failed: %s", p.name, exc)
            p.seq_marks.append(p.tracker.snapshot() if p.tracker is not None else {})
            p.audio_marks.append(p.audio_tracker.snapshot() if p.audio_tracker is not None else {})
            ss = server_sample(self.ctx.server, self.scenario.room, p.name)
            rc = p.relay_counters()
            prev = p._prev_relay or rc
            interval = dt if p._prev_relay is not None else None
            p._prev_relay = rc
            if p._window_relay is None:
                p._window_relay = rc
            rx = cs.get("rx")
            if rx is not None:
                p.rx_totals = rx
                if p._window_rx is None:
                    p._window_rx = rx
            prx = p._prev_rx or p.rx_totals
            p._prev_rx = p.rx_totals
            d_rx, d_lost = p.rx_totals[0] - prx[0], p.rx_totals[1] - prx[1]
            s = p.series
            s["recv_bps"].append((rc["down_bytes"] - prev["down_bytes"]) * 8 / interval
                                 if interval else None)
            s["sent_bps"].append((rc["up_bytes"] - prev["up_bytes"]) * 8 / interval
                                 if interval else None)
            s["estimate_bps"].append(ss["estimate_bps"])
            s["layer"].append(ss["layer"])
            s["target_layer"].append(ss["target_layer"])
            for tsid, (layer, _target) in ss["tracks"].items():
                per = p.layer_series.setdefault(tsid, [None] * (len(self.t) - 1))
                per.append(layer)
            for per in p.layer_series.values():
                per.extend([None] * (len(self.t) - len(per)))
            s["capacity_bps"].append(capacity_over(p.link_history, now - dt, now)
                                     if self.t[-1] > 0 else None)
            s["loss_before"].append(fraction(rc["down_drop"] - prev["down_drop"],
                                          rc["down_sent"] - prev["down_sent"]))
            s["uplink_loss"].append(fraction(rc["up_drop"] - prev["up_drop"],
                                          rc["up_sent"] - prev["up_sent"]))
            s["loss_after"].append(fraction(max(0, d_lost), max(0, d_rx) + max(0, d_lost))
                                   if rx is not None else None)
            s["rtt_ms"].append(cs.get("rtt_ms") if cs.get("rtt_ms") is not None
                               else ss["server_rtt_ms"])
            s["jitter_ms"].append(cs.get("jitter_ms"))
            s["jitter_buffer_ms"].append(cs.get("jitter_buffer_ms"))
            s["audio_jitter_buffer_ms"].append(cs.get("audio_jitter_buffer_ms"))
            s["audio_jitter_target_ms"].append(cs.get("audio_jitter_target_ms"))
            sent = p.video_frames_sent() if p.error is None else None
            prev_sent, p._prev_frames_sent = p._prev_frames_sent, sent
            s["sent_fps"].append((sent - prev_sent) / dt if sent is not None and
                                 prev_sent is not None and self.t[-1] > 0 else None)
            videos = [m for m in p.meters.values() if m.kind == "video"]
            fps = [(m.window_frames - p.frame_counts.get(id(m), 0)) / dt for m in videos]
            p.frame_counts = {id(m): m.window_frames for m in videos}
            if not p.spec.subscribe or self.t[-1] <= 0:
                s["fps"].append(None)
            else:
                s["fps"].append(min(fps) if fps else 0.0)
            s["freezes"].append(sum(len(m.gaps) for m in videos) if videos else None)
            s["frozen"].append(any(m.frozen_at(now) for m in videos) if videos else None)
            recent = [ms for m in videos for at, ms in m.latency if now - dt < at <= now]
            s["latency_ms"].append(statistics.median(recent) if recent else None)
            s["latency_max_ms"].append(max(recent) if recent else None)
            s["audio_concealed"].append(_concealed_since(p, len(self.t) - 1))

    def _apply_schedule(self, t: float, pending: list[tuple[float, Participant, Any]]) -> None:
        assert self.ctx.relay is not None
        while pending and pending[0][0] <= t:
            at, p, change = pending.pop(0)
            p.set_link(change.profile, change.label)
            self.events.append({"t": round(t, 3), "at": round(at, 3), "participant": p.name,
                                "link": change.label, "up": change.profile.up.spec(),
                                "down": change.profile.down.spec()})
            self.say(f"t={t:5.1f}s {p.name}: link -> {change.label}")

    # -- the run
    async def run(self) -> RunResult:
        started = time.time()
        try:
            await self._start_server()
            await self._start_relay()
            self.say(f"scenario {self.scenario.name}: {len(self._instances)} participants, "
                     f"{self.scenario.duration_s:g} s, Ferry {self.ctx.ws_url}, relay "
                     f"{self.ctx.turn_url}")
            await self._start_participants()
            await self._measure()
            return self._result(started)
        finally:
            await self._teardown()

    async def _measure(self) -> None:
        t0 = time.monotonic()
        self.ctx.t0 = t0
        for p in self.participants:
            for m in p.meters.values():
                m.start_window(t0)
        pending = sorted(
            ((c.at_s, p, c) for p in self.participants for c in p.spec.schedule),
            key=lambda x: x[0])
        duration = self.scenario.duration_s
        step = self.options.sample_interval_s
        watcher = asyncio.ensure_future(self._watch_loop())
        try:
            await self._run_samples(t0, pending, duration, step)
        finally:
            watcher.cancel()
        end = time.monotonic()
        self._end = end
        for p in self.participants:
            for m in p.meters.values():
                m.finish(end)
            self._residual_loss(p)
        if self.lag.stalls:
            worst = max(self.lag.stalls, key=lambda x: x[1])
            self.ctx.notes.append(
                f"the runner's event loop stalled {len(self.lag.stalls)} time(s) by over "
                f"{LoopLag.STALL_MS:.0f} ms (worst {worst[1]:.0f} ms at t={worst[0] - t0:.1f}s): "
                "freezes and latencies then include the runner's own delay")

    async def _run_samples(self, t0: float, pending: list[tuple[float, Participant, Any]],
                           duration: float, step: float) -> None:
        await self._sample(t0)
        k = 1
        while True:
            due = t0 + k * step
            if due > t0 + duration + 1e-6:
                break
            # sleep until the next sample, applying schedule changes exactly on time
            while True:
                now = time.monotonic()
                nxt = min([due] + [t0 + at for at, _, _ in pending[:1]])
                if nxt > now:
                    await asyncio.sleep(nxt - now)
                self._apply_schedule(time.monotonic() - t0, pending)
                if time.monotonic() >= due:
                    break
            await self._sample(time.monotonic())
            k += 1

    def _residual_loss(self, p: Participant) -> None:
        """Loss after recovery from the SeqTracker, leaving RTX time at the end.

        Sequence numbers sent in the last ``RECOVERY_GRACE_S`` may still be on their way
        (or be retransmitted) when the run stops, so they are not judged.
        """
        p.loss_after_total = None
        last_t = self.t[-1] - RECOVERY_GRACE_S if self.t else 0.0
        cut = max((k for k, t in enumerate(self.t) if t <= last_t), default=0)
        if p.audio_tracker is not None and cut > 0 and len(p.audio_marks) > cut:
            exp, miss = p.audio_tracker.missing(p.audio_marks[0], p.audio_marks[cut])
            p.audio_loss_after_total = miss / exp if exp else None
        if p.tracker is None or len(p.seq_marks) < 2:
            return
        series: list[Any] = [None]
        for k in range(1, len(p.seq_marks)):
            if k > cut:
                series.append(None)
                continue
            exp, miss = p.tracker.missing(p.seq_marks[k - 1], p.seq_marks[k])
            series.append(miss / exp if exp else 0.0)
        p.series["loss_after"] = series
        if cut > 0:
            exp, miss = p.tracker.missing(p.seq_marks[0], p.seq_marks[cut])
            p.loss_after_total = miss / exp if exp else 0.0

    async def _teardown(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.participants), return_exceptions=True)
        await self.ctx.close_browser()
        if self.ctx.relay is not None:
            with contextlib.suppress(Exception):
                await self.ctx.relay.close()
        if self._own_server is not None:
            with contextlib.suppress(Exception):
                await self._own_server.stop()

    def _result(self, started: float) -> RunResult:
        t0 = self.ctx.t0 or 0.0
        end = self._end if self._end is not None else time.monotonic()
        summaries = {p.name: summarise(p, self.t, t0, end) for p in self.participants}
        participants = {p.name: {**summaries[p.name], "series": p.series,
                                 "layer_tracks": p.layer_series} for p in self.participants}
        server: dict[str, Any] = {"url": self.ctx.ws_url}
        if self.ctx.server is not None:
            snap = self.ctx.server.engine.snapshot()
            server["engine"] = {k: v for k, v in snap.items() if isinstance(v, int | float | dict)}
        relay = dict(self.ctx.relay.stats) if self.ctx.relay else {}
        checks = check_expectations(self.scenario.expectations, run_groups(self._instances),
                                    summaries)
        return RunResult(self.scenario, started, self.t, participants, self.events, checks,
                         list(self.ctx.notes), server, relay, {"loop_lag_ms": self.lag_ms})


def _concealed_since(p: Participant, k: int) -> float | None:
    """Chromium's concealed / received audio samples up to sample ``k`` of the window
    (None for other clients: aiortc and the LiteClient do not conceal)."""
    marks = list(p.concealment.values())
    received = sum(m[1][1] - m[0][1] for m in marks)
    if not marks or received <= 0 or k == 0:
        return None
    return sum(m[1][0] - m[0][0] for m in marks) / received


async def run_scenario(scenario: Scenario, options: RunOptions) -> RunResult:
    """Run ``scenario`` and write its report into ``options.out_dir``."""
    result = await Runner(scenario, options).run()
    write_report(result, options.out_dir)
    return result
