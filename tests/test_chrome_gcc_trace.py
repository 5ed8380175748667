"""Chrome's own GCC over a netem trace, live: the runner behind the README's Chrome column.

A 15 s piece (35-50 s) of the seeded ``synthetic-wifi-steps`` trace: 0.7 Mbit/s for
7 s, a 3 s outage, 0.7 Mbit/s again. Two headless Chromium pages, one peer connection
relay-only through netem's TURN relay replaying it (``qa.chrome_gcc``). What can fail:

- the figures come out (``qa.bwe_traces.run_metrics``, as for Ferry's column);
- the link carried Chrome's media near its capacity in the 3 s before the outage
  (so the sender really was on the trace link, and not app-limited by its camera);
- the outage is seen: nothing crosses the link during it, media crosses again after;
- the recovery after it is measured from Chrome's ``availableOutgoingBitrate``.

Prints one ``CHROME_GCC {...}`` line with the figures (``pytest -s``).
"""

from __future__ import annotations

import json

import pytest

from clients.chromium import chromium_browser
from qa.bwe_simulation import Phase, Scenario
from qa.bwe_traces import SYNTHETIC, capacity_buckets, trace_window
from qa.chrome_gcc import run_chrome_trace

from .browser import needs_chromium

WINDOW_START_MS, WINDOW_MS = 35_000, 15_000
OUTAGE_MS = (7_000.0, 10_000.0)  # where the window's outage is (checked below)
BEFORE_MS = (4_000.0, 7_000.0)
NEAR_CAPACITY = 0.6


def _scenario() -> Scenario:
    st = next(s for s in SYNTHETIC if s.name == "synthetic-wifi-steps")
    trace = trace_window(st.trace(), WINDOW_START_MS, WINDOW_MS)
    return Scenario(f"{st.name}[35-50 s]", float(WINDOW_MS), [Phase(0.0, None, 25.0, trace=trace)])


def _bits(delivered: list[tuple[float, float]], a: float, b: float) -> float:
    return sum(bits for t, bits in delivered if a <= t < b)


@needs_chromium
@pytest.mark.timeout(60)
async def test_chrome_gcc_over_an_outage_trace() -> None:
    sc = _scenario()
    trace = sc.down[0].trace
    assert trace is not None
    async with chromium_browser() as browser:
        res = await run_chrome_trace(sc, browser)
    m = res.metrics
    caps = capacity_buckets(trace, 1000, sc.duration_ms)
    a, b = BEFORE_MS
    capacity_bits = sum(caps[int(a // 1000) : int(b // 1000)])  # 1 s buckets: bits each
    before = _bits(res.run.delivered, a, b) / capacity_bits
    print("CHROME_GCC", json.dumps({**res.row(), "delivered_over_capacity_before_outage": round(before, 3)}))

    assert len(m.recoveries) == 1, m.recoveries
    at, length, recovery = m.recoveries[0]
    assert at == pytest.approx(OUTAGE_MS[0] / 1000, abs=0.05) and length >= 2.9, m.recoveries
    assert 0.0 < m.utilization, m.row()
    assert m.queue_max_ms >= m.queue_p95_ms > 0.0, m.row()
    assert before >= NEAR_CAPACITY, (before, m.row())

    start, end = OUTAGE_MS
    assert _bits(res.run.delivered, start + 100, end - 100) == 0.0
    assert _bits(res.run.delivered, end, sc.duration_ms) > 0.0
    assert any(t > end for t, _ in res.run.target), "no estimate sampled after the outage"
    assert recovery is not None, m.row()
