"""Benchmark: send-side GCC (media/bwe) on RFC 8867-style single-flow cases, in virtual time.

Prints one JSON object per case (one per line): link utilization, bottleneck
queueing delay p50/p95, loss, and after each capacity change the time for the
estimate to come within 10 % of min(capacity, desired). CPU seconds per case
are included (a 100 s case should take about a second).

Cases (RFC 8867 §5; bottleneck buffer 300 ms, as the RFC's reference setup):

- ``5.1``: variable available capacity, one flow: 1.0 -> 2.5 -> 0.6 -> 1.0
  Mbit/s at 0/40/60/80 s, 50 ms one-way delay, 100 s (the steps as implemented
  by Cisco's ns3-rmcat test suite for the draft; the brief's "2.8" is not used);
- ``5.3-like``: forward 2 -> 1 -> 0.5 -> 2 Mbit/s at 0/20/40/60 s while the
  *feedback* path is congested from 35 s to 70 s (no reverse media flow here, so
  congestion is emulated: 16 kbit/s, 10 % loss, 300 ms buffer);
- ``5.4-like``: RTT variation on a 1.5 Mbit/s link: one-way delay 25 -> 150 ->
  50 -> 250 -> 25 ms at 0/20/40/60/80 s (applied to both directions).
- ``jitter`` (not an RFC 8867 case; lossy Wi-Fi is jittery): 1.5 Mbit/s, 50 ms,
  with +-10 ms then +-25 ms of delay jitter from 20 s and 40 s: jitter must not
  read as congestion.

Trace cases (``--traces``): 60 s (60-120 s) of each real Mahimahi trace in
``../shared/data/traces`` (read in place, GPL-3+ data) and the seeded synthetic traces
of ``qa.bwe_traces.SYNTHETIC`` (3G-like, LTE-like, Wi-Fi-like steps, with outages of up
to 3 s), desired 2.5 Mbit/s, 25 ms one-way delay, a 300 ms drop-tail buffer at the
trace's mean rate. One JSON object per trace: utilization of ``min(capacity,
desired)``, queue delay p95/max, and the recovery time after each outage (the figures
``tests/test_bwe_traces.py`` checks).

Chrome beside Ferry (``--chrome``): the same trace cases, each also run live by
``qa.chrome_gcc`` (two headless Chromium pages, one peer connection relay-only
through netem's TURN relay replaying the trace on the sender's uplink, 60 s of wall
time per trace); one JSON object per trace with ``ferry`` and ``chrome`` figures from
the same ``qa.bwe_traces.run_metrics``. Run it in a loopback-only namespace:
``unshare --net sh -c 'ip link set lo up && exec python bench/bwe.py --chrome'``.

Run: python bench/bwe.py [--case NAME] [--seed N] [--plot DIR] [--traces [NAME ...]]
[--chrome [NAME ...]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qa.bwe_simulation import Phase, Scenario, SimResult, Simulation, percentile  # noqa: E402
from qa.bwe_traces import (  # noqa: E402
    REAL_TRACES_DIR,
    SYNTHETIC,
    real_trace_scenario,
    synthetic_scenario,
    trace_metrics,
)

MBIT = 1_000_000


def cases(seed: int) -> dict[str, Scenario]:
    d = 50.0
    return {
        "5.1": Scenario(
            "5.1",
            100_000,
            [Phase(0, 1.0 * MBIT, d), Phase(40_000, 2.5 * MBIT, d), Phase(60_000, 0.6 * MBIT, d), Phase(80_000, 1.0 * MBIT, d)],
            up=[Phase(0, None, d)],
            desired_bps=3 * MBIT,
            seed=seed,
        ),
        "5.3-like": Scenario(
            "5.3-like",
            100_000,
            [Phase(0, 2 * MBIT, d), Phase(20_000, 1 * MBIT, d), Phase(40_000, 0.5 * MBIT, d), Phase(60_000, 2 * MBIT, d)],
            up=[Phase(0, 2 * MBIT, d), Phase(35_000, 16_000, d, loss=0.10), Phase(70_000, 2 * MBIT, d)],
            desired_bps=3 * MBIT,
            seed=seed,
        ),
        "5.4-like": Scenario(
            "5.4-like",
            100_000,
            [Phase(t, 1.5 * MBIT, dd) for t, dd in ((0, 25.0), (20_000, 150.0), (40_000, 50.0), (60_000, 250.0), (80_000, 25.0))],
            up=[Phase(t, None, dd) for t, dd in ((0, 25.0), (20_000, 150.0), (40_000, 50.0), (60_000, 250.0), (80_000, 25.0))],
            desired_bps=3 * MBIT,
            seed=seed,
        ),
        "jitter": Scenario(
            "jitter",
            60_000,
            [Phase(0, 1.5 * MBIT, d), Phase(20_000, 1.5 * MBIT, d, jitter_ms=10.0), Phase(40_000, 1.5 * MBIT, d, jitter_ms=25.0)],
            up=[Phase(0, None, d)],
            desired_bps=3 * MBIT,
            seed=seed,
        ),
    }


def convergence(r: SimResult) -> list[dict[str, Any]]:
    """Per down-link phase: seconds until the estimate is within 10 % of the reference."""
    sc = r.scenario
    out = []
    phases = list(sc.down)
    for i, p in enumerate(phases):
        end = phases[i + 1].t_ms if i + 1 < len(phases) else sc.duration_ms
        ref = min(p.rate_bps or math.inf, sc.desired_bps)
        hit = next(
            (s.t_ms for s in r.samples if p.t_ms <= s.t_ms < end and abs(s.estimate_bps - ref) <= 0.1 * ref),
            None,
        )
        est = r.series("estimate_bps", p.t_ms + (end - p.t_ms) / 2, end)  # second half of the phase
        out.append(
            {
                "t_s": p.t_ms / 1000,
                "capacity_kbps": None if p.rate_bps is None else p.rate_bps / 1000,
                "delay_ms": p.delay_ms,
                "converge_s": None if hit is None else round((hit - p.t_ms) / 1000, 2),
                "estimate_over_ref_2nd_half": round(sum(est) / len(est) / ref, 3) if est else None,
            }
        )
    return out


def summarize(r: SimResult, cpu_s: float) -> dict[str, Any]:
    sc = r.scenario
    ds = r.counters["down"]
    # integral of capacity over the run (sample-wise)
    cap_bits = sum((s.capacity_bps or 0.0) * sc.sample_ms / 1000 for s in r.samples)
    delays = [d for _, d in r.queue_delays]
    return {
        "case": sc.name,
        "seed": sc.seed,
        "duration_s": sc.duration_ms / 1000,
        "utilization": round(ds["bytes_delivered"] * 8 / cap_bits, 3) if cap_bits else None,
        "queue_delay_p50_ms": round(percentile(delays, 50), 1),
        "queue_delay_p95_ms": round(percentile(delays, 95), 1),
        "queue_delay_max_ms": round(max(delays, default=0.0), 1),
        "loss": round((ds["dropped_loss"] + ds["dropped_queue"]) / ds["sent"], 4) if ds["sent"] else 0.0,
        "feedback_loss": round(
            (r.counters["up"]["dropped_loss"] + r.counters["up"]["dropped_queue"]) / max(1, r.counters["up"]["sent"]), 4
        ),
        "probes": r.counters["probes"],
        "pacer_dropped": r.counters["pacer_dropped"],
        "phases": convergence(r),
        "cpu_s": round(cpu_s, 2),
    }


def plot(r: SimResult, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_ms / 1000 for s in r.samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    ax.step(t, [(s.capacity_bps or 0) / 1e6 for s in r.samples], where="post", color="k", label="capacity")
    ax.plot(t, [s.estimate_bps / 1e6 for s in r.samples], label="estimate")
    ax.plot(t, [s.delivered_bps / 1e6 for s in r.samples], alpha=0.4, label="delivered (100 ms)")
    ax.plot(
        t,
        [(s.loss_based_bps or math.nan) / 1e6 for s in r.samples],
        ls="--",
        alpha=0.7,
        label="loss-based limit",
    )
    ax.set_ylabel("Mbit/s")
    ax.set_title(f"{r.scenario.name}: GCC estimate vs capacity (seed {r.scenario.seed})")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax2.plot(t, [s.net_queue_ms for s in r.samples], color="tab:red")
    ax2.set_ylabel("queue ms")
    ax2.set_xlabel("s")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bwe_{r.scenario.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def trace_cases(seed: int) -> dict[str, Scenario]:
    """The real traces found in REAL_TRACES_DIR, then the synthetic ones."""
    out: dict[str, Scenario] = {}
    if REAL_TRACES_DIR.is_dir():
        for path in sorted(REAL_TRACES_DIR.iterdir()):
            if path.suffix in (".up", ".down"):
                out[path.name] = real_trace_scenario(path.name, seed=seed)
    for st in SYNTHETIC:
        out[st.name] = synthetic_scenario(st, seed=seed)
    return out


def run_traces(names: list[str], seed: int, plot_dir: Path | None) -> None:
    all_cases = trace_cases(seed)
    for name in names or list(all_cases):
        if name not in all_cases:
            raise SystemExit(f"unknown trace {name!r} (allowed: {', '.join(all_cases)})")
        t0 = time.process_time()
        r = Simulation(all_cases[name]).run()
        row = trace_metrics(r).row()
        row["cpu_s"] = round(time.process_time() - t0, 2)
        if plot_dir is not None:
            row["plot"] = str(plot(r, plot_dir))
        print(json.dumps(row), flush=True)


async def _run_chrome(names: list[str], all_cases: dict[str, Scenario]) -> None:
    from clients.chromium import chromium_browser
    from qa.chrome_gcc import run_chrome_trace

    async with chromium_browser() as browser:
        for name in names:
            sc = all_cases[name]
            ferry = trace_metrics(Simulation(sc).run()).row()
            t0 = time.monotonic()
            chrome = (await run_chrome_trace(sc, browser)).row()
            # a live run shares the machine: the load says how much the figures may owe to it
            print(json.dumps({"case": name, "ferry": ferry, "chrome": chrome,
                              "wall_s": round(time.monotonic() - t0, 1),
                              "load_1m": round(os.getloadavg()[0], 2)}), flush=True)


def run_chrome(names: list[str], seed: int) -> None:
    """Each trace case in virtual time (Ferry) and live (Chrome's own GCC)."""
    all_cases = trace_cases(seed)
    for name in names:
        if name not in all_cases:
            raise SystemExit(f"unknown trace {name!r} (allowed: {', '.join(all_cases)})")
    asyncio.run(_run_chrome(names or list(all_cases), all_cases))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="case name (repeatable); default all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plot", type=Path, help="write PNGs of estimate vs capacity here")
    ap.add_argument("--traces", nargs="*", metavar="NAME", help="run the trace cases (all, or NAMEs)")
    ap.add_argument(
        "--chrome", nargs="*", metavar="NAME", help="trace cases with Chrome's own GCC live beside Ferry (all, or NAMEs)"
    )
    args = ap.parse_args(argv)
    if args.chrome is not None:
        run_chrome(args.chrome, args.seed)
        return 0
    if args.traces is not None:
        run_traces(args.traces, args.seed, args.plot)
        return 0
    all_cases = cases(args.seed)
    names = args.case or list(all_cases)
    for name in names:
        if name not in all_cases:
            ap.error(f"unknown case {name!r} (allowed: {', '.join(all_cases)})")
        t0 = time.process_time()
        r = Simulation(all_cases[name]).run()
        row = summarize(r, time.process_time() - t0)
        if args.plot is not None:
            row["plot"] = str(plot(r, args.plot))
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
