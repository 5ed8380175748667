"""Virtual-time harness: sans-I/O endpoints wired through netem links.

Why: bandwidth estimation, NACK and layer switching need minutes of traffic
over bad links to test; in virtual time a 60 s scenario runs in a second or
two of CPU and gives the same result every run (seeded links, no clock).

An endpoint is anything with aioquic's shape (``Endpoint`` below): it is given
datagrams with ``receive_datagram(data, addr, now_ms)``, is asked for what to
send with ``datagrams_to_send(now_ms) -> [(data, dest_name), ...]``, and
exposes one ``next_deadline()`` served by ``on_timer(now_ms)``. Addresses are
endpoint names. ``Sim.connect(a, b, a_to_b, b_to_a)`` puts one ``Link`` per
direction between two endpoints (a star around an SFU is several connects).

The loop: drain every endpoint's output into its links, jump the clock to the
earliest deadline (link deliveries, endpoint timers, ``call_at`` callbacks),
deliver due packets, fire due timers and callbacks, repeat.

Example (RTT through 40 ms each way is 80 ms)::

    class Pinger:
        def __init__(self):
            self.out, self.rtts, self.due = [], [], 0.0
        def receive_datagram(self, data, addr, now_ms):
            self.rtts.append(now_ms - float(data.decode()))
        def datagrams_to_send(self, now_ms):
            out, self.out = self.out, []
            return out
        def next_deadline(self):
            return self.due
        def on_timer(self, now_ms):
            self.out.append((str(now_ms).encode(), "echo"))
            self.due = now_ms + 100.0

    class Echo:  # sends back whatever it gets
        ...

    sim = Sim(seed=1)
    sim.add("ping", Pinger())
    sim.add("echo", Echo())
    sim.connect("ping", "echo", "delay 40ms", "delay 40ms")
    sim.run_until(1_000.0)       # 1 s of virtual time, instantly
    sim.call_at(2_000.0, lambda now: sim.link("ping", "echo").set_config("delay 200ms", now))
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from netem.link import EventLog, Link, LinkConfig


class Endpoint(Protocol):
    """A sans-I/O endpoint the ``Sim`` can drive."""

    def receive_datagram(self, data: bytes, addr: str, now_ms: float) -> None: ...

    def datagrams_to_send(self, now_ms: float) -> list[tuple[bytes, str]]: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now_ms: float) -> None: ...


class ManualClock:
    """A clock that only moves when told to (tests and the ``Sim``)."""

    def __init__(self, start_ms: float = 0.0) -> None:
        self.now_ms = start_ms

    def advance(self, delta_ms: float) -> float:
        if delta_ms < 0:
            raise ValueError("a clock cannot go back")
        self.now_ms += delta_ms
        return self.now_ms

    def set(self, t_ms: float) -> None:
        if t_ms < self.now_ms:
            raise ValueError(f"a clock cannot go back ({t_ms} < {self.now_ms})")
        self.now_ms = t_ms


class Sim:
    """A discrete-event simulator in virtual milliseconds."""

    def __init__(self, start_ms: float = 0.0, seed: int = 0, max_events: int = 50_000_000) -> None:
        self.clock = ManualClock(start_ms)
        self.seed = seed
        self.max_events = max_events
        self.events = 0
        self._endpoints: dict[str, Endpoint] = {}
        self._links: dict[tuple[str, str], Link] = {}
        self._calls: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()

    @property
    def now_ms(self) -> float:
        return self.clock.now_ms

    def add(self, name: str, endpoint: Endpoint) -> None:
        if name in self._endpoints:
            raise ValueError(f"endpoint {name!r} already added")
        self._endpoints[name] = endpoint

    def connect(
        self,
        a: str,
        b: str,
        a_to_b: LinkConfig | str | Mapping[str, Any] | None = None,
        b_to_a: LinkConfig | str | Mapping[str, Any] | None = None,
        *,
        event_log: EventLog | None = None,
    ) -> tuple[Link, Link]:
        """Put a link each way between ``a`` and ``b``; returns ``(a->b, b->a)``.

        Each link gets its own random stream derived from the sim seed, the
        config seed and the direction, so up and down losses are independent
        yet reproducible.
        """
        for name in (a, b):
            if name not in self._endpoints:
                raise ValueError(f"unknown endpoint {name!r} (add it first)")
        made = []
        for src, dst, cfg in ((a, b, a_to_b), (b, a, b_to_a)):
            config = LinkConfig.coerce(cfg)
            rng = random.Random(f"{self.seed}/{config.seed}/{src}->{dst}")
            link = Link(config, self.now_ms, rng=rng, event_log=event_log)
            self._links[(src, dst)] = link
            made.append(link)
        return made[0], made[1]

    def link(self, src: str, dst: str) -> Link:
        return self._links[(src, dst)]

    def call_at(self, t_ms: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now_ms)`` at virtual time ``t_ms`` (profile changes, probes)."""
        heapq.heappush(self._calls, (t_ms, next(self._seq), fn))

    # ------------------------------------------------------------------ loop
    def _flush(self, now_ms: float) -> None:
        for name, ep in self._endpoints.items():
            for data, dst in ep.datagrams_to_send(now_ms):
                link = self._links.get((name, dst))
                if link is None:
                    raise ValueError(f"no link from {name!r} to {dst!r}")
                link.push(data, now_ms)

    def _next_time(self) -> float | None:
        best: float | None = self._calls[0][0] if self._calls else None
        for link in self._links.values():
            d = link.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        for ep in self._endpoints.values():
            d = ep.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def step(self, end_ms: float) -> bool:
        """Process the next instant at or before ``end_ms``; False when none is left."""
        now = self.clock.now_ms
        self._flush(now)
        t = self._next_time()
        if t is None or t > end_ms:
            return False
        if t > now:
            self.clock.set(t)
            now = t
        self.events += 1
        if self.events > self.max_events:
            raise RuntimeError("Sim.max_events exceeded (an endpoint deadline that never advances?)")
        for (src, dst), link in self._links.items():
            if (d := link.next_deadline()) is not None and d <= now:
                ep = self._endpoints[dst]
                for data in link.pop_ready(now):
                    ep.receive_datagram(data, src, now)
        for ep in self._endpoints.values():
            d = ep.next_deadline()
            if d is not None and d <= now:
                ep.on_timer(now)
        while self._calls and self._calls[0][0] <= now:
            _, _, fn = heapq.heappop(self._calls)
            fn(now)
        return True

    def run_until(self, end_ms: float) -> None:
        """Run every event up to ``end_ms`` and leave the clock there."""
        while self.step(end_ms):
            pass
        if end_ms > self.clock.now_ms:
            self.clock.set(end_ms)

    def run_for(self, duration_ms: float) -> None:
        self.run_until(self.clock.now_ms + duration_ms)
