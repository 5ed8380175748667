"""The trendline's C fit (media/bwe/_trendfit.c) against its Python twin: the same
floats to the last bit, so the estimator's outputs do not depend on which one runs."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from media.bwe.trendline import NATIVE_FIT, _py_slope, linear_fit_slope
from qa.bwe_simulation import Phase, Scenario, Simulation

trendfit = pytest.importorskip("media.bwe._trendfit")

ROOT = Path(__file__).resolve().parent.parent


def _windows(seed: int, count: int) -> list[tuple[deque[float], deque[float]]]:
    """Trendline-like windows: arrival offsets growing over seconds to hours, smoothed
    delays of a few ms, some with a steep trend, some flat."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        x = rnd.uniform(0.0, 1e7)
        xs, ys = deque(maxlen=20), deque(maxlen=20)
        slope = rnd.choice((0.0, rnd.uniform(-0.5, 0.5)))
        for _ in range(20):
            x += rnd.uniform(0.1, 40.0)
            xs.append(x)
            ys.append(slope * x / 1e3 + rnd.gauss(0.0, 3.0))
        out.append((xs, ys))
    return out


def test_the_c_fit_is_the_python_fit_to_the_last_bit() -> None:
    for xs, ys in _windows(seed=7, count=2000):
        c, py = trendfit.slope(xs, ys), _py_slope(xs, ys)
        assert c is not None and py is not None
        assert c.hex() == py.hex()
        assert py == linear_fit_slope(list(zip(xs, ys, strict=True)))


def test_the_c_fit_has_no_slope_when_every_point_has_one_x() -> None:
    xs, ys = deque([5.0] * 20), deque([float(i) for i in range(20)])
    assert trendfit.slope(xs, ys) is None and _py_slope(xs, ys) is None
    assert trendfit.slope(deque([1.0]), deque([2.0])) is None


def test_the_c_fit_refuses_points_it_cannot_pair() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        trendfit.slope(deque([1.0, 2.0]), deque([1.0]))
    with pytest.raises(TypeError):
        trendfit.slope(deque([1.0, "x"]), deque([1.0, 2.0]))


def _estimates_digest() -> str:
    """Every sample of a 20 s simulated call through a capacity drop, full precision."""
    scenario = Scenario(
        "drop",
        20_000,
        [Phase(0, 2_000_000.0, 40.0), Phase(8_000, 600_000.0, 40.0)],
        up=[Phase(0, None, 40.0)],
        desired_bps=2_500_000.0,
        seed=3,
    )
    samples = Simulation(scenario).run().samples
    return hashlib.sha256(repr(samples).encode()).hexdigest()


def test_without_native_code_the_estimator_gives_the_same_estimates() -> None:
    """FERRY_NATIVE_SEND=0 (the Python fit) in a child process: the same samples."""
    if not NATIVE_FIT:
        pytest.skip("this process fits in Python already (FERRY_NATIVE_SEND=0)")
    script = (
        "from media.bwe.trendline import NATIVE_FIT\n"
        "from tests.test_bwe_native import _estimates_digest\n"
        "assert not NATIVE_FIT\n"
        "print(_estimates_digest())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "FERRY_NATIVE_SEND": "0"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == _estimates_digest()
