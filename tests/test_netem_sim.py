"""Virtual-time harness: toy sans-I/O endpoints through netem links."""

from __future__ import annotations

import struct
import time

import pytest

from netem.sim import ManualClock, Sim


class Pinger:
    """Sends a timestamped ping every ``interval_ms`` to ``peer``; records RTTs."""

    def __init__(self, peer: str = "echo", interval_ms: float = 20.0, size: int = 100) -> None:
        self.peer = peer
        self.interval = interval_ms
        self.size = size
        self.due: float | None = 0.0
        self.out: list[tuple[bytes, str]] = []
        self.rtts: list[float] = []
        self.sent = 0

    def receive_datagram(self, data: bytes, addr: str, now_ms: float) -> None:
        self.rtts.append(now_ms - struct.unpack_from("!d", data)[0])

    def datagrams_to_send(self, now_ms: float) -> list[tuple[bytes, str]]:
        out, self.out = self.out, []
        return out

    def next_deadline(self) -> float | None:
        return self.due

    def on_timer(self, now_ms: float) -> None:
        self.out.append((struct.pack("!d", now_ms) + bytes(self.size - 8), self.peer))
        self.sent += 1
        self.due = now_ms + self.interval


class Echo:
    def __init__(self) -> None:
        self.out: list[tuple[bytes, str]] = []

    def receive_datagram(self, data: bytes, addr: str, now_ms: float) -> None:
        self.out.append((data, addr))

    def datagrams_to_send(self, now_ms: float) -> list[tuple[bytes, str]]:
        out, self.out = self.out, []
        return out

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now_ms: float) -> None:  # pragma: no cover - never due
        pass


def _pair(up: str, down: str, seed: int = 1) -> tuple[Sim, Pinger]:
    sim = Sim(seed=seed)
    ping = Pinger()
    sim.add("ping", ping)
    sim.add("echo", Echo())
    sim.connect("ping", "echo", up, down)
    return sim, ping


def test_rtt_is_twice_the_delay() -> None:
    sim, ping = _pair("delay 40ms", "delay 40ms")
    sim.run_until(1_000.0)
    assert ping.rtts and all(r == pytest.approx(80.0) for r in ping.rtts)
    assert sim.now_ms == 1_000.0


def test_rate_adds_serialization_and_loss_is_seeded() -> None:
    sim, ping = _pair("delay 20ms rate 1mbit loss 10%", "delay 20ms rate 1mbit")
    sim.run_until(60_000.0)  # one minute of virtual time
    # 100-byte packets: 0.8 ms serialization each way
    assert min(ping.rtts) == pytest.approx(41.6)
    lost = 1 - len(ping.rtts) / ping.sent
    assert 0.07 < lost < 0.13
    sim2, ping2 = _pair("delay 20ms rate 1mbit loss 10%", "delay 20ms rate 1mbit")
    sim2.run_until(60_000.0)
    assert ping2.rtts == ping.rtts


def test_profile_change_at_run_time() -> None:
    sim, ping = _pair("delay 10ms", "delay 10ms")
    sim.call_at(500.0, lambda now: sim.link("ping", "echo").set_config("delay 110ms", now))
    sim.run_until(1_000.0)
    assert ping.rtts[0] == pytest.approx(20.0)
    assert ping.rtts[-1] == pytest.approx(120.0)


def test_queue_builds_when_offered_above_capacity() -> None:
    sim = Sim()
    ping = Pinger(interval_ms=5.0, size=1250)  # 2 Mbit/s offered
    sim.add("ping", ping)
    sim.add("echo", Echo())
    sim.connect("ping", "echo", "rate 1mbit limit 20", None)
    sim.run_until(10_000.0)
    link = sim.link("ping", "echo")
    assert link.stats.dropped_queue > 0
    # 20 packets of 10 ms each ahead: about 200 ms of queueing delay
    assert max(ping.rtts) == pytest.approx(200.0, abs=10.1)


def test_sixty_seconds_run_fast() -> None:
    sim, ping = _pair("delay 30ms 5ms loss 2% rate 2mbit", "delay 30ms 5ms rate 2mbit")
    t0 = time.perf_counter()
    sim.run_until(60_000.0)
    assert time.perf_counter() - t0 < 2.0
    assert len(ping.rtts) > 2800


def test_errors() -> None:
    sim = Sim()
    sim.add("a", Pinger(peer="nowhere"))
    with pytest.raises(ValueError, match="already added"):
        sim.add("a", Echo())
    with pytest.raises(ValueError, match="unknown endpoint 'b'"):
        sim.connect("a", "b")
    sim.add("b", Echo())
    sim.connect("a", "b")
    with pytest.raises(ValueError, match="no link from 'a' to 'nowhere'"):
        sim.run_until(10.0)


def test_manual_clock() -> None:
    clock = ManualClock(5.0)
    assert clock.advance(2.5) == 7.5
    with pytest.raises(ValueError):
        clock.set(1.0)
    with pytest.raises(ValueError):
        clock.advance(-1.0)
