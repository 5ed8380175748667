"""A scenario run's outcome: per-participant summaries, expectation checks, ``RunResult``.

``RunResult`` holds everything ``qa.report`` writes; ``passed`` decides the exit code of
``ferry netem run``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qa.measurement import fraction, mean_of, median_of, percentile
from qa.participants import Participant
from qa.scenario import Expectation, ParticipantSpec, Scenario

LATENCY_KEPT = 6000
"""Per-frame glass-to-glass figures kept in report.json per participant (the last ones)."""


@dataclass
class RunResult:
    """Everything the report needs; ``passed`` decides the exit code."""

    scenario: Scenario
    started_at: float
    t: list[float]
    participants: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    expectations: list[dict[str, Any]]
    notes: list[str]
    server: dict[str, Any]
    relay: dict[str, Any]
    runner: dict[str, Any] = field(default_factory=dict)  # the runner's own loop lag per sample

    @property
    def passed(self) -> bool:
        return all(e["ok"] for e in self.expectations)


def summarise(p: Participant, t: list[float], t0: float, end: float) -> dict[str, Any]:
    """One participant's figures over the measured window ``[t0, end]`` (monotonic s);
    ``t`` holds the sample times, the participant's ``series`` one value per sample."""
    dur = max(1e-3, end - t0)
    videos = [m for m in p.meters.values() if m.kind == "video"]
    audios = [m for m in p.meters.values() if m.kind == "audio"]
    rc = p.relay_counters()
    w = p._window_relay or rc
    wrx = p._window_rx or p.rx_totals
    d_rx, d_lost = p.rx_totals[0] - wrx[0], max(0, p.rx_totals[1] - wrx[1])
    s = p.series
    n = len(t)
    tail = max(1, n // 4)
    tail_fps = [x for x in s["fps"][n - tail:] if x is not None]
    per_track = {tsid: [x for x in xs if x is not None] for tsid, xs in p.layer_series.items()}
    layers_after = [x for xs in per_track.values() for x in xs] or [
        x for x in s["layer"] if x is not None]
    sub = p.spec.subscribe
    latency = sorted(ms for m in videos for _, ms in m.latency)
    heard = sorted(ms for m in audios for _, ms in m.latency)
    framed_audio = [m for m in audios if m.gaps_from_frames]
    caps = [c for c in s.get("capacity_bps", []) if c is not None]
    recv_bps = (rc["down_bytes"] - w["down_bytes"]) * 8 / dur
    audio_loss = p.audio_loss_after_total
    marks = list(p.concealment.values())
    received = sum(m[1][1] - m[0][1] for m in marks)
    if marks and received > 0:
        concealed: float | None = sum(m[1][0] - m[0][0] for m in marks) / received
    elif framed_audio and sub:  # aiortc: time without audio frames stands for the concealed
        concealed = min(1.0, sum(m.audio_missing for m in framed_audio) / (dur * len(framed_audio)))
    else:
        concealed = None
    return {
        "client": p.kind,
        "profile": p.spec.link_label,
        "publish": list(p.spec.publish),
        "subscribe": sub,
        "error": p.error,
        "connected": 1 if p.connected and p.error is None else 0,
        "remote_video_tracks": len(videos),
        "remote_audio_tracks": max(len(framed_audio), len(p.concealment)),
        "decoded_frames": sum(m.window_frames for m in videos) if sub else None,
        "decoded_frames_min": min((m.window_frames for m in videos), default=0) if sub else None,
        "decoded_fps": (min((m.window_frames for m in videos), default=0) / dur) if sub else None,
        "final_fps": (mean_of(tail_fps) or 0.0) if sub else None,
        "audio_frames": sum(m.window_frames for m in audios) if sub else None,
        "freeze_count": sum(len(m.gaps) for m in videos) if sub else None,
        "latency_p50_ms": percentile(latency, 0.5) if sub else None,
        "latency_p95_ms": percentile(latency, 0.95) if sub else None,
        "latency_max_ms": latency[-1] if sub and latency else None,
        "latency_frames": len(latency) if sub else None,
        "audio_latency_p50_ms": percentile(heard, 0.5) if sub else None,
        "audio_latency_max_ms": heard[-1] if sub and heard else None,
        "audio_latency_beeps": len(heard) if sub else None,
        "freeze_max_ms": max((g for m in videos for _, g in m.gaps), default=0.0) * 1000.0
        if sub else None,
        "freeze_total_ms": sum(g for m in videos for _, g in m.gaps) * 1000.0 if sub else None,
        "frame_gap_max_ms": max((m.max_gap for m in videos), default=0.0) * 1000.0
        if sub else None,
        "audio_gap_ms": sum(m.audio_missing for m in framed_audio) * 1000.0
        if sub and framed_audio else None,
        "loss_before_recovery": fraction(rc["down_drop"] - w["down_drop"],
                                      rc["down_sent"] - w["down_sent"]),
        "loss_after_recovery": (
            audio_loss if not videos and audio_loss is not None
            else p.loss_after_total if p.tracker is not None and p.loss_after_total is not None
            else fraction(d_lost, d_rx + d_lost)) if sub else None,
        "audio_loss_after_recovery": audio_loss if sub and audios else None,
        "video_nacks_repeated": p.video_repair[0] if sub and p.video_repair else None,
        "video_holes_given_up": p.video_repair[1] if sub and p.video_repair else None,
        "audio_concealed": concealed if sub else None,
        "audio_concealment_events": sum(m[1][2] - m[0][2] for m in marks) if marks else None,
        "uplink_loss": fraction(rc["up_drop"] - w["up_drop"], rc["up_sent"] - w["up_sent"]),
        "recv_bps": recv_bps,
        "capacity_bps": mean_of(caps),
        "utilization": recv_bps / mean_of(caps) if caps and (mean_of(caps) or 0) > 0 else None,
        "sent_bps": (rc["up_bytes"] - w["up_bytes"]) * 8 / dur,
        "rtt_ms": median_of(s["rtt_ms"]),
        "rtt_max_ms": max((x for x in s["rtt_ms"] if x is not None), default=None),
        "jitter_ms": median_of(s["jitter_ms"]),
        "jitter_buffer_ms": median_of(s["jitter_buffer_ms"]),
        "audio_jitter_buffer_ms": median_of(s["audio_jitter_buffer_ms"]),
        "audio_jitter_target_max_ms": max((x for x in s["audio_jitter_target_ms"] if x is not None), default=None),
        "sent_fps_min": min((x for x in s["sent_fps"] if x is not None), default=None),
        "layer_mean": mean_of(layers_after),
        "layer_min": min(layers_after) if layers_after else None,
        "layers": {tsid: mean_of(xs) for tsid, xs in per_track.items()},
        "estimate_bps": mean_of(s["estimate_bps"]),
        "freezes": [{"t": round(start - t0, 3), "ms": round(g * 1000.0, 1)}
                    for m in videos for start, g in m.gaps],
        "link": p.link_label,
        "latency": [[round(at - t0, 3), round(ms, 1)]
                    for at, ms in sorted(x for m in videos for x in m.latency)][-LATENCY_KEPT:],
        "audio_latency": [[round(at - t0, 3), round(ms, 1)]
                          for at, ms in sorted(x for m in audios for x in m.latency)],
    }


def check_expectations(expectations: list[Expectation], groups: dict[str, list[str]],
                       summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each expectation (after the implicit "everyone connected") against the summaries:
    ``{"expect", "ok", "actual", "failing", "detail"}``."""
    checks: list[dict[str, Any]] = []
    implicit = Expectation.parse("all.connected == 1")
    for e, is_implicit in [(implicit, True)] + [(e, False) for e in expectations]:
        members = groups.get(e.subject, [])
        values = {m: summaries.get(m, {}).get(e.metric) for m in members}
        ok = bool(members)
        detail = ""
        if e.aggregate:
            present = [float(v) for v in values.values() if v is not None]
            agg: dict[str, Callable[[list[float]], float]] = {
                "min": min, "max": max, "sum": sum, "mean": statistics.fmean,
                "median": statistics.median}
            actual: Any = agg[e.aggregate](present) if present else None
            ok = actual is not None and e.holds(actual)
            failing: list[str] = [] if ok else [e.subject]
        else:
            failing = [m for m, v in values.items() if v is None or not e.holds(float(v))]
            ok = ok and not failing
            actual = values
        if not members:
            detail = f"no participant in {e.subject!r}"
        elif not ok:
            detail = ", ".join(f"{m}={_fmt(values.get(m)) if not e.aggregate else _fmt(actual)}"
                               for m in failing)
        checks.append({"expect": e.text + (" (implicit)" if is_implicit else ""), "ok": ok,
                       "actual": actual, "failing": failing, "detail": detail})
    return checks


def run_groups(instances: list[tuple[str, ParticipantSpec]]) -> dict[str, list[str]]:
    """Like ``Scenario.groups`` but with the identities that actually ran (fallbacks)."""
    out: dict[str, list[str]] = {"all": [], "subscribers": [], "publishers": []}
    for name, spec in instances:
        out.setdefault(spec.name, []).append(name)
        if name != spec.name:
            out[name] = [name]
        out["all"].append(name)
        if spec.subscribe:
            out["subscribers"].append(name)
        if spec.publish:
            out["publishers"].append(name)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
