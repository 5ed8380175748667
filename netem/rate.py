"""Rate stage of a link: a FIFO server fed in arrival order.

Why this shape: arrivals reach the rate stage in nondecreasing time order (the
delay stage never reorders unless asked to, and reordered packets bypass the
rate stage as in netem), so the departure time of each packet is known the
moment it arrives. A server is therefore one call, ``serve(arrival_ms, size) ->
departure_ms``, and the link can compute everything at ``push`` time.

Three specs (immutable values that go into ``LinkConfig``), each making a fresh
stateful server with ``server(start_ms)``:

* ``ConstantRate(bps)`` - ``rate 1mbit``: serialization ``size * 8 / bps``.
* ``StepRate(steps, period_ms)`` - a schedule ``[(t_ms, bps), ...]`` relative to
  the link's start, optionally looped; bits are integrated exactly across steps
  (a 0 bit/s step is an outage).
* ``MahimahiTrace`` - one line per 1500-byte delivery opportunity, in ms,
  looped with period = last timestamp. Byte accounting as Mahimahi's
  ``LinkQueue``: one opportunity can carry several small packets, a big packet
  can span opportunities (it leaves with the opportunity carrying its last
  byte), and bytes of an opportunity that finds the queue empty are wasted.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
from dataclasses import dataclass
from typing import Protocol

MTU_BYTES = 1500
"""Bytes per Mahimahi delivery opportunity (its README's figure)."""


class RateServer(Protocol):
    """A FIFO server: arrivals must come in nondecreasing ``arrival_ms``."""

    def serve(self, arrival_ms: float, size: int) -> float:
        """Return the departure time of a ``size``-byte packet."""
        ...


class RateSpec(Protocol):
    """An immutable rate description that can make servers."""

    def server(self, start_ms: float) -> RateServer: ...

    def spec(self) -> str: ...


def format_rate(bps: float) -> str:
    """Bits per second in tc's words (``1mbit``, ``300kbit``, ``64bit``)."""
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale and (bps / scale) == round(bps / scale, 3):
            return f"{bps / scale:g}{unit}"
    return f"{bps:g}bit"


@dataclass(frozen=True, slots=True)
class ConstantRate:
    """A constant serialization rate in bit/s."""

    bps: float

    def __post_init__(self) -> None:
        if not self.bps > 0 or math.isinf(self.bps):
            raise ValueError(f"rate must be a positive number of bit/s (got {self.bps!r})")

    def server(self, start_ms: float) -> ConstantServer:
        return ConstantServer(self.bps)

    def spec(self) -> str:
        return f"rate {format_rate(self.bps)}"


class ConstantServer:
    """``departure = max(arrival, busy_until) + size * 8 / bps``."""

    __slots__ = ("_ms_per_byte", "busy_until")

    def __init__(self, bps: float) -> None:
        self._ms_per_byte = 8000.0 / bps
        self.busy_until = -math.inf

    def serve(self, arrival_ms: float, size: int) -> float:
        start = arrival_ms if arrival_ms > self.busy_until else self.busy_until
        self.busy_until = start + size * self._ms_per_byte
        return self.busy_until


@dataclass(frozen=True, slots=True)
class StepRate:
    """A rate schedule of steps ``(t_ms, bps)`` from the link's start.

    The first step must be at 0 ms. With ``period_ms`` the schedule repeats;
    without it the last step lasts forever and must be > 0 bit/s (a packet
    must be able to leave).
    """

    steps: tuple[tuple[float, float], ...]
    period_ms: float | None = None

    def __post_init__(self) -> None:
        steps = tuple((float(t), float(r)) for t, r in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or steps[0][0] != 0.0:
            raise ValueError("rate steps must start at 0 ms")
        for (t0, _), (t1, _) in zip(steps, steps[1:], strict=False):
            if t1 <= t0:
                raise ValueError("rate step times must be strictly increasing")
        if any(r < 0 or math.isinf(r) for _, r in steps):
            raise ValueError("rate steps must be finite and >= 0 bit/s")
        if self.period_ms is None:
            if steps[-1][1] <= 0:
                raise ValueError("the last rate step must be > 0 bit/s unless the schedule loops")
        else:
            if self.period_ms <= steps[-1][0]:
                raise ValueError("rate schedule period must be after the last step")
            if all(r <= 0 for _, r in steps):
                raise ValueError("a looping rate schedule needs one step > 0 bit/s")

    def server(self, start_ms: float) -> StepServer:
        return StepServer(self, start_ms)

    def spec(self) -> str:
        body = ",".join(f"{t:g}ms:{format_rate(r)}" for t, r in self.steps)
        loop = f" period {self.period_ms:g}ms" if self.period_ms is not None else ""
        return f"steps {body}{loop}"


class StepServer:
    """Integrates bits across schedule steps exactly."""

    __slots__ = ("_times", "_rates", "_period", "_start", "busy_until")

    def __init__(self, spec: StepRate, start_ms: float) -> None:
        self._times = [t for t, _ in spec.steps]
        self._rates = [r for _, r in spec.steps]
        self._period = spec.period_ms
        self._start = start_ms
        self.busy_until = -math.inf

    def _segment(self, t_ms: float) -> tuple[float, float]:
        """Rate in force at ``t_ms`` and the absolute time it ends."""
        rel = t_ms - self._start
        base = 0.0
        if self._period is not None:
            loops = math.floor(rel / self._period) if rel > 0 else 0
            base = loops * self._period
            rel -= base
        i = max(bisect.bisect_right(self._times, rel) - 1, 0)
        if i + 1 < len(self._times):
            end = self._start + base + self._times[i + 1]
        elif self._period is not None:
            end = self._start + base + self._period
        else:
            end = math.inf
        return self._rates[i], end

    def serve(self, arrival_ms: float, size: int) -> float:
        t = arrival_ms if arrival_ms > self.busy_until else self.busy_until
        bits = size * 8.0
        while True:
            rate, end = self._segment(t)
            if rate > 0:
                finish = t + bits * 1000.0 / rate
                if finish <= end:
                    self.busy_until = finish
                    return finish
                bits -= rate * (end - t) / 1000.0
            t = end


@dataclass(frozen=True, slots=True, eq=False)
class MahimahiTrace:
    """A parsed Mahimahi ``mm-link`` trace (ms timestamps of 1500-byte opportunities)."""

    timestamps: tuple[int, ...]
    path: str | None = None

    def __post_init__(self) -> None:
        ts = self.timestamps
        if not ts:
            raise ValueError("trace is empty")
        for i in range(1, len(ts)):
            if ts[i] < ts[i - 1]:
                raise ValueError(
                    f"trace line {i + 1}: timestamps must be monotonically nondecreasing"
                )
        if ts[0] < 0:
            raise ValueError("trace timestamps must be >= 0")
        if ts[-1] <= 0:
            raise ValueError("trace's last timestamp must be > 0")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MahimahiTrace) and self.timestamps == other.timestamps

    def __hash__(self) -> int:
        return hash((len(self.timestamps), self.timestamps[-1], self.path))

    @property
    def period_ms(self) -> int:
        return self.timestamps[-1]

    def mean_bps(self) -> float:
        """Capacity of one loop: opportunities * 1500 B * 8 / period."""
        return len(self.timestamps) * MTU_BYTES * 8 * 1000.0 / self.period_ms

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> MahimahiTrace:
        """Parse trace text; errors name the line, as Mahimahi's do."""
        out: list[int] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            s = line.strip()
            if not s:
                raise ValueError(f"trace line {lineno}: empty line")
            try:
                value = int(s)
            except ValueError:
                raise ValueError(f"trace line {lineno}: not an integer: {s[:20]!r}") from None
            if value < 0:
                raise ValueError(f"trace line {lineno}: negative timestamp")
            if out and value < out[-1]:
                raise ValueError(
                    f"trace line {lineno}: timestamps must be monotonically nondecreasing"
                )
            out.append(value)
        return cls(tuple(out), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MahimahiTrace:
        """Read and validate a trace file (cached: traces are immutable data)."""
        return _load_trace(os.path.abspath(os.fspath(path)))

    def server(self, start_ms: float) -> TraceServer:
        return TraceServer(self, start_ms)

    def spec(self) -> str:
        return f"trace {self.path}" if self.path else f"trace <{len(self.timestamps)} lines>"


@functools.lru_cache(maxsize=32)
def _load_trace(path: str) -> MahimahiTrace:
    with open(path, encoding="ascii") as fp:
        return MahimahiTrace.parse(fp.read(), path)


class TraceServer:
    """Mahimahi ``LinkQueue`` byte accounting, computed per arrival."""

    __slots__ = ("_ts", "_n", "_period", "_base", "_idx", "_cur_t", "_left")

    def __init__(self, trace: MahimahiTrace, start_ms: float) -> None:
        self._ts = trace.timestamps
        self._n = len(trace.timestamps)
        self._period = float(trace.period_ms)
        self._base = start_ms  # absolute time of the current loop's 0 ms
        self._idx = 0  # next opportunity not yet used
        self._cur_t = -math.inf  # time of the last opportunity used
        self._left = 0  # bytes left in it

    def _seek(self, t_ms: float) -> None:
        """Skip opportunities before ``t_ms`` (their bytes are wasted)."""
        rel = t_ms - self._base
        if rel >= self._period:
            loops = math.floor(rel / self._period)
            self._base += loops * self._period
            self._idx = 0
            rel = t_ms - self._base
        self._idx = bisect.bisect_left(self._ts, rel, self._idx)
        if self._idx >= self._n:
            self._base += self._period
            self._idx = bisect.bisect_left(self._ts, t_ms - self._base)

    def serve(self, arrival_ms: float, size: int) -> float:
        need = size
        if self._left > 0 and self._cur_t >= arrival_ms:
            take = need if need < self._left else self._left
            self._left -= take
            need -= take
            if need == 0:
                return self._cur_t
        else:
            self._left = 0
            if self._base + (self._ts[self._idx] if self._idx < self._n else self._period) < arrival_ms:
                self._seek(arrival_ms)
        ts, n = self._ts, self._n
        while need > 0:
            if self._idx >= n:
                self._base += self._period
                self._idx = 0
            t = self._base + ts[self._idx]
            self._idx += 1
            if t < arrival_ms:
                continue
            take = need if need < MTU_BYTES else MTU_BYTES
            need -= take
            self._left = MTU_BYTES - take
            self._cur_t = t
        return self._cur_t
