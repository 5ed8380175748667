"""One direction of an emulated link: the sans-I/O core of netem.

Why sans-I/O: the same object runs in virtual time (``netem.sim``, tests that
push 100k packets in a fraction of a second) and live (the UDP proxy and TURN
relay shells, which stamp ``now_ms`` from ``loop.time()`` and keep one timer on
``next_deadline()``). Nothing here reads a clock or global randomness.

Pipeline per pushed packet, in netem's order (``netem_enqueue``):

1. duplicate - with probability ``duplicate`` a second copy goes through the
   rest of the pipeline on its own (its own loss draw, as netem re-enqueues it);
2. loss - the config's loss model;
3. corrupt - flip one random bit of one random byte;
4. delay + jitter, *or* reorder: ``reorder P gap N`` sends a packet now
   (no delay, no rate stage) when at least ``N - 1`` packets were delayed since
   the last reordered one and a draw < P hits, exactly netem's rule. Without
   reorder a packet never leaves before the one pushed before it: jittered
   arrival times are clamped to be nondecreasing (netem would reorder here;
   people asking for ``delay 80ms 20ms`` almost never want that);
5. byte/packet-limited FIFO with tail drop, served by the rate stage (constant,
   steps, or a Mahimahi trace). The limit counts what waits at the rate stage,
   evaluated when the packet reaches it (netem's ``limit`` also counts packets
   in the delay line, a classic netem pitfall we do not reproduce);
6. a time-ordered output, read with ``pop_ready(now_ms)``.

Because the delay stage keeps order and the rate stage is FIFO, every
departure time is known at ``push`` time, so a push is O(1) and a pop is a
deque pop. ``set_config(config, now_ms)`` switches profile at run time and
keeps queued packets: packets still waiting at the rate stage are re-served
by the new rate from ``now_ms`` (their delay already drawn stays).

Stats are plain counters on ``link.stats``; an optional ``event_log`` callable
receives qlog-like dicts (``JsonlEventLog`` writes them as JSON lines). A delivered
packet's event carries its size and, past a rate stage, its sojourn there
(``queue_ms``): a live run can be judged per packet, as the virtual-time harness is.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import IO, Any

from netem.loss import CorrelatedRandom, LossModel, NullLoss
from netem.rate import ConstantRate, MahimahiTrace, RateServer, RateSpec, StepRate
from netem.spec import parse_netem, parse_rate_bps, parse_time_ms

DISTRIBUTIONS = ("uniform", "normal")

EventLog = Callable[[dict[str, Any]], None]


def _pct(x: float) -> str:
    return f"{round(x * 100, 6):g}%"


def _words(keyword: str) -> Callable[[Any, Mapping[str, Any]], dict[str, Any]]:
    """A dict value given in netem words: ``{"loss": "5%"}`` -> ``loss 5%``."""

    def convert(value: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(value, str | int | float):
            return {"rate" if keyword == "rate" else keyword: value}
        if keyword == "rate" and not isinstance(value, str):
            return {"rate": ConstantRate(float(value))}
        return parse_netem(f"{keyword} {value}")

    return convert


def _time_field(name: str) -> Callable[[Any, Mapping[str, Any]], dict[str, Any]]:
    def convert(value: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        return {name: parse_time_ms(value) if isinstance(value, str) else float(value)}

    return convert


def _steps(value: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    steps = tuple(
        (
            parse_time_ms(t) if isinstance(t, str) else t,
            parse_rate_bps(r) if isinstance(r, str) else r,
        )
        for t, r in value
    )
    return {"rate": StepRate(steps, data.get("period_ms"))}


_DICT_WORDS: dict[str, Callable[[Any, Mapping[str, Any]], dict[str, Any]]] = {
    "delay": _time_field("delay_ms"),
    "jitter": _time_field("jitter_ms"),
    "loss": _words("loss"),
    "rate": _words("rate"),
    "trace": lambda value, data: {"rate": MahimahiTrace.load(value)},
    "steps": _steps,
    "limit": _words("limit"),
    "duplicate": _words("duplicate"),
    "corrupt": _words("corrupt"),
    "reorder": _words("reorder"),
}


@dataclass(frozen=True)
class LinkConfig:
    """Parameters of one direction, in netem's terms (a value: shareable, printable).

    ``queue_bytes``/``queue_packets`` limit the FIFO in front of the rate stage
    (only meaningful with a rate); ``None`` means unlimited. ``seed`` seeds the
    link's ``random.Random``.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    delay_correlation: float = 0.0
    distribution: str = "uniform"
    loss: LossModel = field(default_factory=NullLoss)
    rate: RateSpec | None = None
    queue_bytes: int | None = None
    queue_packets: int | None = None
    reorder: float = 0.0
    reorder_correlation: float = 0.0
    reorder_gap: int = 1
    duplicate: float = 0.0
    duplicate_correlation: float = 0.0
    corrupt: float = 0.0
    corrupt_correlation: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0 ms")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.distribution!r} (allowed: {', '.join(DISTRIBUTIONS)})"
            )
        for name in (
            "delay_correlation",
            "reorder",
            "reorder_correlation",
            "duplicate",
            "duplicate_correlation",
            "corrupt",
            "corrupt_correlation",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (got {value!r})")
        if self.reorder_gap < 0:
            raise ValueError("reorder gap must be >= 0")
        for name in ("queue_bytes", "queue_packets"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None")

    # ----------------------------------------------------------- constructors
    @classmethod
    def parse(cls, text: str) -> LinkConfig:
        """Build from ``tc netem`` words, e.g. ``delay 80ms 20ms loss 5% rate 1mbit``."""
        return cls(**parse_netem(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkConfig:
        """Build from a dict (YAML/JSON form).

        Accepts ``{"spec": "delay 80ms ..."}`` and/or field names, where values
        may be netem words: ``{"delay": "80ms", "jitter": "20ms", "loss": "5%",
        "rate": "1mbit", "limit": "100kb", "trace": PATH, "seed": 3}`` or
        numbers in the field's unit (``delay_ms: 80``).
        """
        kwargs: dict[str, Any] = {}
        if "spec" in data:
            kwargs.update(parse_netem(str(data["spec"])))
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key in ("spec", "period_ms"):
                continue
            if key in _DICT_WORDS:
                kwargs.update(_DICT_WORDS[key](value, data))
            elif key in known:
                kwargs[key] = value
            else:
                raise ValueError(
                    f"unknown link key {key!r} (allowed: spec, {', '.join(_DICT_WORDS)}, "
                    f"{', '.join(sorted(known))})"
                )
        return cls(**kwargs)

    @classmethod
    def coerce(cls, value: LinkConfig | str | Mapping[str, Any] | None) -> LinkConfig:
        """Accept a config, netem words, a dict, or ``None`` (unimpaired)."""
        if value is None:
            return cls()
        if isinstance(value, LinkConfig):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_dict(value)

    def with_changes(self, **changes: Any) -> LinkConfig:
        """A copy with some fields changed (runners use this to step a profile)."""
        return replace(self, **changes)

    # ------------------------------------------------------------ rendering
    def spec(self) -> str:
        """Back to netem words (round-trips through ``parse`` for built-in specs)."""
        parts: list[str] = []
        if self.delay_ms or self.jitter_ms:
            d = f"delay {self.delay_ms:g}ms"
            if self.jitter_ms:
                d += f" {self.jitter_ms:g}ms"
                if self.delay_correlation:
                    d += f" {_pct(self.delay_correlation)}"
            parts.append(d)
            if self.distribution != "uniform":
                parts.append(f"distribution {self.distribution}")
        if self.loss.spec():
            parts.append(self.loss.spec())
        for name in ("duplicate", "corrupt"):
            value = getattr(self, name)
            if value:
                corr = getattr(self, f"{name}_correlation")
                parts.append(f"{name} {_pct(value)}" + (f" {_pct(corr)}" if corr else ""))
        if self.reorder:
            r = f"reorder {_pct(self.reorder)}"
            if self.reorder_correlation:
                r += f" {_pct(self.reorder_correlation)}"
            parts.append(r + f" gap {self.reorder_gap}")
        if self.rate is not None:
            parts.append(self.rate.spec())
        if self.queue_bytes is not None:
            qb = self.queue_bytes
            parts.append(f"limit {qb // 1024}kb" if qb % 1024 == 0 else f"limit {qb}b")
        elif self.queue_packets is not None:
            parts.append(f"limit {self.queue_packets}")
        if self.seed:
            parts.append(f"seed {self.seed}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the spec string plus the main numbers)."""
        return {"spec": self.spec(), "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms}


@dataclass
class LinkStats:
    """Counters of one link; queue delay is time spent at the rate stage."""

    sent: int = 0
    delivered: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    dropped_overflow: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0
    queue_delay_count: int = 0
    queue_delay_sum_ms: float = 0.0
    queue_delay_max_ms: float = 0.0
    queue_delay_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    @property
    def queue_delay_mean_ms(self) -> float:
        return self.queue_delay_sum_ms / self.queue_delay_count if self.queue_delay_count else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "queue_delay_ms"}
        out["queue_delay_mean_ms"] = self.queue_delay_mean_ms
        return out


class JsonlEventLog:
    """An ``event_log`` that writes one JSON object per line (qlog-like)."""

    def __init__(self, fp: IO[str], link_name: str = "") -> None:
        self._fp = fp
        self._name = link_name

    def __call__(self, event: dict[str, Any]) -> None:
        if self._name:
            event = {**event, "link": self._name}
        self._fp.write(json.dumps(event, separators=(",", ":")) + "\n")


# Entry in the output FIFO: [departure_ms, data, meta, rate_arrival_ms or None, size]
_Entry = list[Any]


class Link:
    """One direction of an emulated link (sans-I/O; see the module docstring)."""

    def __init__(
        self,
        config: LinkConfig | str | Mapping[str, Any] | None = None,
        start_ms: float = 0.0,
        *,
        rng: random.Random | None = None,
        event_log: EventLog | None = None,
        max_held: int = 100_000,
    ) -> None:
        cfg = LinkConfig.coerce(config)
        self.stats = LinkStats()
        self._rng = rng if rng is not None else random.Random(cfg.seed)
        self._log = event_log
        self._max_held = max_held
        self._out: deque[_Entry] = deque()  # nondecreasing departures
        self._now_out: deque[_Entry] = deque()  # reordered packets (sent "now")
        self._rate_q: deque[_Entry] = deque()  # entries not yet past the rate stage
        self._rate_q_bytes = 0
        self._last_arrival = -math.inf
        self._last_departure = -math.inf
        self._reorder_counter = 0
        self._apply(cfg, start_ms)

    def _apply(self, cfg: LinkConfig, now_ms: float) -> None:
        self.config = cfg
        self._loss: LossModel = copy.deepcopy(cfg.loss)
        self._server: RateServer | None = cfg.rate.server(now_ms) if cfg.rate else None
        self._dup_rand = CorrelatedRandom(cfg.duplicate_correlation)
        self._cor_rand = CorrelatedRandom(cfg.corrupt_correlation)
        self._reo_rand = CorrelatedRandom(cfg.reorder_correlation)
        self._delay_rand = CorrelatedRandom(cfg.delay_correlation)

    @property
    def held(self) -> int:
        """Packets inside the link (delay line, rate queue and output)."""
        return len(self._out) + len(self._now_out)

    # ------------------------------------------------------------------ input
    def push(self, packet: bytes, now_ms: float, meta: Any = None) -> None:
        """Offer a packet to the link at ``now_ms``; ``meta`` rides along."""
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += len(packet)
        cfg = self.config
        if cfg.duplicate and self._dup_rand.next(self._rng) < cfg.duplicate:
            stats.duplicated += 1
            self._enqueue(packet, now_ms, meta)
        self._enqueue(packet, now_ms, meta)

    def _drop(self, reason: str, now_ms: float, size: int) -> None:
        if self._log is not None:
            self._log({"time": now_ms, "name": "netem:packet_dropped",
                       "data": {"reason": reason, "size": size}})

    def _enqueue(self, packet: bytes, now_ms: float, meta: Any) -> None:
        cfg = self.config
        rng = self._rng
        size = len(packet)
        if self._loss.drop(rng):
            self.stats.dropped_loss += 1
            self._drop("loss", now_ms, size)
            return
        if cfg.corrupt and size and self._cor_rand.next(rng) < cfg.corrupt:
            buf = bytearray(packet)
            buf[rng.randrange(size)] ^= 1 << rng.randrange(8)
            packet = bytes(buf)
            self.stats.corrupted += 1
        if len(self._out) + len(self._now_out) >= self._max_held:
            self.stats.dropped_overflow += 1
            self._drop("overflow", now_ms, size)
            return
        if cfg.reorder and cfg.delay_ms + cfg.jitter_ms > 0:
            if (
                cfg.reorder_gap == 0
                or self._reorder_counter < cfg.reorder_gap - 1
                or self._reo_rand.next(rng) >= cfg.reorder
            ):
                self._reorder_counter += 1
            else:
                self._reorder_counter = 0
                self.stats.reordered += 1
                self._now_out.append([now_ms, packet, meta, None, size])
                return
        arrival = now_ms + cfg.delay_ms
        if cfg.jitter_ms:
            arrival += self._jitter(cfg)
            if arrival < now_ms:
                arrival = now_ms
        if arrival < self._last_arrival:
            arrival = self._last_arrival
        self._last_arrival = arrival
        if self._server is None:
            self._push_out([arrival, packet, meta, None, size])
            return
        self._admit(arrival, packet, meta, size, now_ms)

    def _jitter(self, cfg: LinkConfig) -> float:
        """netem's ``tabledist`` without a table: uniform in +-jitter (or normal)."""
        if cfg.distribution == "normal":
            return self._rng.gauss(0.0, cfg.jitter_ms)
        u = self._delay_rand.next(self._rng)
        return (2.0 * u - 1.0) * cfg.jitter_ms

    def _admit(self, arrival: float, packet: bytes, meta: Any, size: int, now_ms: float) -> None:
        """Tail-drop check at the rate stage, then serve."""
        cfg = self.config
        q = self._rate_q
        while q and q[0][0] <= arrival:
            self._rate_q_bytes -= q.popleft()[4]
        if (cfg.queue_bytes is not None and self._rate_q_bytes + size > cfg.queue_bytes) or (
            cfg.queue_packets is not None and len(q) >= cfg.queue_packets
        ):
            self.stats.dropped_queue += 1
            self._drop("queue", now_ms, size)
            return
        assert self._server is not None
        departure = self._server.serve(arrival, size)
        entry = [departure, packet, meta, arrival, size]
        q.append(entry)
        self._rate_q_bytes += size
        stats = self.stats
        qd = departure - arrival  # sojourn at the rate stage, as Mahimahi/CoDel count it
        stats.queue_delay_count += 1
        stats.queue_delay_sum_ms += qd
        if qd > stats.queue_delay_max_ms:
            stats.queue_delay_max_ms = qd
        stats.queue_delay_ms.append(qd)
        self._push_out(entry)

    def _push_out(self, entry: _Entry) -> None:
        if entry[0] < self._last_departure:
            entry[0] = self._last_departure
        self._last_departure = entry[0]
        self._out.append(entry)

    # ----------------------------------------------------------------- output
    def next_deadline(self) -> float | None:
        """When the next packet is due (``None`` when empty)."""
        if self._now_out:
            if self._out and self._out[0][0] < self._now_out[0][0]:
                return float(self._out[0][0])
            return float(self._now_out[0][0])
        if self._out:
            return float(self._out[0][0])
        return None

    def pop_ready(self, now_ms: float) -> list[bytes]:
        """Packets due at or before ``now_ms``, in departure order."""
        return [item[0] for item in self.pop_ready_items(now_ms)]

    def pop_ready_items(self, now_ms: float) -> list[tuple[bytes, Any]]:
        """Like ``pop_ready`` but with each packet's ``meta``."""
        out = self._out
        ready: list[_Entry] = []
        while out and out[0][0] <= now_ms:
            ready.append(out.popleft())
        if self._now_out:
            while self._now_out and self._now_out[0][0] <= now_ms:
                ready.append(self._now_out.popleft())
            ready.sort(key=lambda e: e[0])
        if not ready:
            return []
        stats = self.stats
        stats.delivered += len(ready)
        log = self._log
        items: list[tuple[bytes, Any]] = []
        for e in ready:
            stats.bytes_delivered += e[4]
            if log is not None:
                data: dict[str, Any] = {"size": e[4]}
                if e[3] is not None:  # sojourn at the rate stage (what queue_delay_ms counts)
                    data["queue_ms"] = e[0] - e[3]
                log({"time": e[0], "name": "netem:packet_sent", "data": data})
            items.append((e[1], e[2]))
        return items

    # ---------------------------------------------------------- reconfigure
    def set_config(self, config: LinkConfig | str | Mapping[str, Any], now_ms: float) -> None:
        """Switch to another config at ``now_ms`` keeping packets in flight.

        New loss/delay/rate apply to new packets; packets still waiting at
        the rate stage are re-served by the new rate from ``now_ms``. The
        random stream carries on (no reseed), so a run stays reproducible.
        """
        cfg = LinkConfig.coerce(config)
        self._apply(cfg, now_ms)
        if self._log is not None:
            self._log({"time": now_ms, "name": "netem:config_changed", "data": {"spec": cfg.spec()}})
        pending = [e for e in self._out if e[3] is not None and e[0] > now_ms]
        if not pending:
            return
        keep = deque(e for e in self._out if not (e[3] is not None and e[0] > now_ms))
        self._out = keep
        self._last_departure = keep[-1][0] if keep else -math.inf
        self._rate_q = deque()
        self._rate_q_bytes = 0
        for e in pending:
            start = e[3] if e[3] > now_ms else now_ms
            if self._server is not None:
                e[0] = self._server.serve(start, e[4])
                self._rate_q.append(e)
                self._rate_q_bytes += e[4]
            else:
                e[0] = start
            self._push_out(e)

