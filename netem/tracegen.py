"""Deterministic synthetic cellular traces (Mahimahi format) that Ferry ships itself.

Why: the real LTE traces in ``../shared/data/traces`` are GPL-3+ data that the package
must not carry, yet the built-in ``congested-lte`` scenario has to run from an installed
package. So the project generates its own LTE-like traces from a seed and ships the
output in ``netem/traces/`` (package data); ``tests/test_netem_tracegen.py`` checks the
shipped files are byte-identical to what this module generates, so they never drift.

The capacity model, in 100 ms steps (rates in bit/s):

* a slow random walk of log-capacity around ``mean_bps`` (AR(1), coefficient 0.97 per
  step, so swings last seconds, as in a car on a loaded cell) clipped to
  ``[floor_bps, ceiling_bps]``;
* **fades**: a Poisson process (one per ``fade_every_s`` on average) of 0.4-2.5 s dips
  to 3-20 % of the walk, entered and left over 200 ms (shadowing, cell edge);
* **outages**: rarer 100-500 ms stretches of zero capacity (handovers).

Capacity becomes opportunities with a byte credit: each millisecond earns
``rate / 8000`` bytes and every 1500 bytes is one line (Mahimahi's delivery
opportunity). The last line is the period, so the trace loops seamlessly. Only
``random.Random(seed).random()`` is drawn, whose sequence Python guarantees across
versions; normal deviates come from Box-Muller.

Regenerate the shipped files with ``python -m netem.tracegen``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netem.rate import MTU_BYTES, MahimahiTrace

TRACES_DIR = Path(__file__).resolve().parent / "traces"
STEP_MS = 100
FADE_RAMP_MS = 200


@dataclass(frozen=True)
class LteModel:
    """Parameters of one direction of a synthetic LTE link."""

    mean_bps: float
    floor_bps: float
    ceiling_bps: float
    sigma: float = 0.08  # log-capacity noise per 100 ms step
    fade_every_s: float = 8.0
    outage_every_s: float = 25.0


@dataclass(frozen=True)
class TraceFile:
    """A shipped trace: its file name, model, seed and loop length."""

    name: str
    model: LteModel
    seed: int
    seconds: int


# What ``netem/traces/`` holds. A congested LTE cell: downlink ~3 Mbit/s and uplink
# ~1.3 Mbit/s on average, both with deep fades and short outages.
SHIPPED: tuple[TraceFile, ...] = (
    TraceFile("ferry-lte.down", LteModel(3.0e6, 0.4e6, 9.0e6), seed=20261, seconds=60),
    TraceFile("ferry-lte.up", LteModel(1.3e6, 0.2e6, 4.0e6), seed=20262, seconds=60),
)


def _normal(rng: random.Random) -> float:
    """A standard normal deviate (Box-Muller) from ``rng.random()`` only."""
    u1 = 1.0 - rng.random()  # (0, 1]: log is finite
    u2 = rng.random()
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _events(rng: random.Random, every_s: float, total_ms: int, lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """(start_ms, length_ms) of a Poisson process with uniform lengths in [lo, hi]."""
    out: list[tuple[int, int]] = []
    t = 0.0
    while True:
        t += -math.log(1.0 - rng.random()) * every_s * 1000.0
        if t >= total_ms:
            return out
        out.append((int(t), lo_ms + int(rng.random() * (hi_ms - lo_ms))))


def capacity_steps(model: LteModel, seed: int, seconds: int) -> list[float]:
    """Capacity (bit/s) of each 100 ms step of a ``seconds``-long trace."""
    rng = random.Random(seed)
    steps = seconds * 1000 // STEP_MS
    total_ms = steps * STEP_MS
    mean = math.log(model.mean_bps)
    lo, hi = math.log(model.floor_bps), math.log(model.ceiling_bps)
    x = mean
    walk: list[float] = []
    for _ in range(steps):
        x = mean + 0.97 * (x - mean) + model.sigma * _normal(rng)
        x = min(hi, max(lo, x))
        walk.append(math.exp(x))
    gain = [1.0] * steps
    for start, length in _events(rng, model.fade_every_s, total_ms, 400, 2500):
        depth = 0.03 + 0.17 * rng.random()
        for k in range(steps):
            t = k * STEP_MS
            if start - FADE_RAMP_MS <= t < start + length + FADE_RAMP_MS:
                edge = min(t - (start - FADE_RAMP_MS), start + length + FADE_RAMP_MS - t)
                depth_here = depth if edge >= FADE_RAMP_MS else 1.0 - (1.0 - depth) * edge / FADE_RAMP_MS
                gain[k] = min(gain[k], depth_here)
    for start, length in _events(rng, model.outage_every_s, total_ms, 100, 500):
        for k in range(start // STEP_MS, min(steps, (start + length) // STEP_MS + 1)):
            gain[k] = 0.0
    return [w * g for w, g in zip(walk, gain, strict=True)]


def opportunities(rates_bps: Sequence[float], step_ms: int = STEP_MS) -> list[int]:
    """Mahimahi lines (ms of each 1500-byte opportunity) for piecewise-constant rates.

    The last line is the loop period (``len(rates) * step_ms``), added if the credit
    did not land an opportunity there.
    """
    period = len(rates_bps) * step_ms
    out: list[int] = []
    credit = 0.0
    for ms in range(1, period + 1):
        credit += rates_bps[(ms - 1) // step_ms] / 8000.0
        while credit >= MTU_BYTES:
            credit -= MTU_BYTES
            out.append(ms)
    if not out or out[-1] != period:
        out.append(period)
    return out


def generate(trace: TraceFile) -> MahimahiTrace:
    """The trace ``trace`` describes (pure: the same seed gives the same lines)."""
    lines = opportunities(capacity_steps(trace.model, trace.seed, trace.seconds))
    return MahimahiTrace(tuple(lines))


def render(trace: TraceFile) -> str:
    """The file text of a generated trace (one integer per line)."""
    return "".join(f"{t}\n" for t in generate(trace).timestamps)


def shipped_path(name: str) -> Path:
    """Where a shipped trace lives (``netem/traces/NAME``)."""
    return TRACES_DIR / name


def main(argv: Sequence[str] | None = None) -> int:
    """Write the shipped traces (default: into ``netem/traces/``)."""
    parser = argparse.ArgumentParser(prog="python -m netem.tracegen", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=TRACES_DIR, help="directory to write into")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for trace in SHIPPED:
        text = render(trace)
        (args.out / trace.name).write_text(text, encoding="ascii")
        parsed = MahimahiTrace.parse(text)
        print(f"{trace.name}: {len(parsed.timestamps)} lines, {parsed.period_ms / 1000:g} s, "
              f"mean {parsed.mean_bps() / 1e6:.2f} Mbit/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
