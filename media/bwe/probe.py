"""Bandwidth probing: find out quickly whether the link carries more.

Why: AIMD only grows 8 %/s (additively near the last capacity), and the acked
rate caps increases at ``1.5 * acked``, so a subscriber whose estimate fell to
500 kbit/s on a bad minute would need tens of seconds to get back to 2.5
Mbit/s, and an app-limited sender (the allocator sends less than the estimate)
never learns the link grew. A *probe cluster* is a short burst (~15 ms, at
least 5 packets) paced at a higher rate, 2-3x the estimate: if the receiver
gets it at that rate, the link can carry it.

``ProbeController`` decides *when* (libwebrtc ``ProbeController`` in spirit):

- at start: two clusters at 3x and 6x the start rate;
- "further probing": after a probe succeeds with a result above 70 % of the
  probed rate while the estimate is still below the desired rate, probe 2x
  higher at once (exponential search);
- periodically (every ``interval_ms``) while the estimate is below the desired
  rate;
- none of these within ``quiet_after_decrease_ms`` of a cut (the queue that caused
  it is still draining);
- never above the desired rate (the allocator would not use more) or max_bps.

After an outage (``probe_now``) a cluster lasts ``OUTAGE_PROBE_DURATION_MS``
(30 ms) instead of 15: the bottleneck is still flushing what waited out the
outage and a cellular link delivers in batches, so a 15 ms burst often lands
in one or two batches and measures nothing (or a batch's rate).

``ProbeResultEstimator`` computes the result from the cluster's feedback
(libwebrtc ``ProbeBitrateEstimator``): send rate over the send interval without
the last packet, receive rate over the arrival interval without the first;
result ``min(send, receive)``, or ``0.95 * receive`` when the receive rate is
clearly below the send rate (the link saturated: receive rate *is* the
capacity). Needs 80 % of the packets and bytes back. A receive rate far above
the send rate (packets bunched by a draining queue or a batching radio) is no
reason to discard the result: the link delivered every packet at least as fast
as it was sent, so the result is the send rate. On the 16 trace cases
(``bench/bwe.py --traces``) 5 of 51 outages are not recovered within 1 s with
the two, 8 without them; mean utilization 0.802 with them, 0.791 without
(seeds 2-4: 26 and 32 of 153, utilization 0.786 either way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from media.rtp.twcc import PacketResult

__all__ = ["ProbeCluster", "ProbeController", "ProbeResultEstimator"]

MIN_PROBE_PACKETS = 5
MIN_PROBE_DURATION_MS = 15.0
MIN_RECEIVED_RATIO = 0.80
MAX_PROBE_INTERVAL_MS = 1000.0
MIN_RATIO_FOR_UNSATURATED = 0.90
TARGET_UTILIZATION = 0.95
LATE_ARRIVAL_MS = 5.0  # a leading packet this much later than a successor's delay was held
CLUSTER_TIMEOUT_MS = 2000.0
HURRY_INTERVAL_MS = 1000.0
OUTAGE_PROBE_DURATION_MS = 30.0  # clusters sent by probe_now (see the module docstring)
# At most this share of a cluster's packets are dropped as held leaders: a cluster whose
# delays fall all along met a draining queue, not a stalled receiver.
MAX_HELD_FRACTION = 0.5


@dataclass(slots=True)
class ProbeCluster:
    """One burst to send at ``bitrate_bps``: at least ``min_packets`` and ``min_bytes``."""

    id: int
    bitrate_bps: int
    min_packets: int
    min_bytes: int
    created_ms: float = 0.0

    @classmethod
    def make(
        cls, cluster_id: int, bitrate_bps: float, now_ms: float, duration_ms: float = MIN_PROBE_DURATION_MS
    ) -> ProbeCluster:
        min_bytes = int(math.ceil(bitrate_bps * duration_ms / 8000.0))
        return cls(cluster_id, int(bitrate_bps), MIN_PROBE_PACKETS, min_bytes, now_ms)


@dataclass(slots=True)
class _ClusterState:
    cluster: ProbeCluster
    sent: dict[int, tuple[float, int]] = field(default_factory=dict)  # seq -> (send_ms, size)
    sent_bytes: int = 0
    results: list[PacketResult] = field(default_factory=list)
    first_send_ms: float | None = None

    @property
    def complete(self) -> bool:
        c = self.cluster
        return len(self.sent) >= c.min_packets and self.sent_bytes >= c.min_bytes


class ProbeResultEstimator:
    """Matches feedback to clusters and computes each cluster's result once."""

    def __init__(self) -> None:
        self._clusters: dict[int, _ClusterState] = {}
        self._seq_to_cluster: dict[int, int] = {}
        self.results: list[tuple[int, float | None]] = []  # (cluster id, bps or None)

    def add_cluster(self, cluster: ProbeCluster) -> None:
        self._clusters[cluster.id] = _ClusterState(cluster)

    def on_probe_sent(self, cluster_id: int, seq: int, size: int, send_ms: float) -> None:
        st = self._clusters.get(cluster_id)
        if st is None:
            return
        st.sent[seq] = (send_ms, size)
        st.sent_bytes += size
        if st.first_send_ms is None:
            st.first_send_ms = send_ms
        self._seq_to_cluster[seq] = cluster_id

    def is_probe(self, seq: int) -> bool:
        return seq in self._seq_to_cluster

    def on_results(self, results: list[PacketResult], now_ms: float) -> list[tuple[int, float | None]]:
        """Feed feedback; returns ``(cluster_id, bps | None)`` for clusters just finished."""
        touched: set[int] = set()
        m = self._seq_to_cluster
        for r in results:
            cid = m.pop(r.seq, None)
            if cid is None:
                continue
            st = self._clusters.get(cid)
            if st is not None:
                st.results.append(r)
                touched.add(cid)
        done: list[tuple[int, float | None]] = []
        for cid in touched:
            st = self._clusters[cid]
            if st.complete and len(st.results) >= len(st.sent):
                done.append((cid, self.compute(st.cluster, st.results)))
                self._forget(cid)
        for cid, st in list(self._clusters.items()):
            start = st.first_send_ms if st.first_send_ms is not None else st.cluster.created_ms
            if now_ms - start > CLUSTER_TIMEOUT_MS:
                done.append((cid, self.compute(st.cluster, st.results) if st.complete else None))
                self._forget(cid)
        self.results.extend(done)
        return done

    def _forget(self, cid: int) -> None:
        st = self._clusters.pop(cid)
        for seq in st.sent:
            self._seq_to_cluster.pop(seq, None)

    @staticmethod
    def compute(cluster: ProbeCluster, results: list[PacketResult]) -> float | None:
        """The probe result in bit/s, or None when the feedback cannot tell."""
        if not results:
            return None
        sent = sorted(results, key=lambda r: r.send_ms)
        recv = sorted((r for r in results if r.arrival_ms is not None), key=lambda r: r.arrival_ms or 0.0)
        total_bytes = sum(r.size for r in sent)
        recv_bytes = sum(r.size for r in recv)
        if (
            len(recv) < MIN_RECEIVED_RATIO * min(len(sent), cluster.min_packets)
            or len(recv) < MIN_RECEIVED_RATIO * len(sent)
            or recv_bytes < MIN_RECEIVED_RATIO * min(total_bytes, cluster.min_bytes)
            or len(recv) < 2
        ):
            return None
        recv = ProbeResultEstimator._drop_held_leaders(recv)
        if len(recv) < 3:
            return None
        recv_bytes = sum(r.size for r in recv)
        send_interval = sent[-1].send_ms - sent[0].send_ms
        first_arrival = recv[0].arrival_ms
        last_arrival = recv[-1].arrival_ms
        assert first_arrival is not None and last_arrival is not None
        recv_interval = last_arrival - first_arrival
        if not (0 < send_interval <= MAX_PROBE_INTERVAL_MS and 0 < recv_interval <= MAX_PROBE_INTERVAL_MS):
            return None
        send_bps = (total_bytes - sent[-1].size) * 8000.0 / send_interval
        recv_bps = (recv_bytes - recv[0].size) * 8000.0 / recv_interval
        if recv_bps < MIN_RATIO_FOR_UNSATURATED * send_bps:
            return TARGET_UTILIZATION * recv_bps
        return min(send_bps, recv_bps)

    @staticmethod
    def _drop_held_leaders(recv: list[PacketResult]) -> list[PacketResult]:
        """Drop leading packets whose one-way delay exceeds a later packet's.

        While a probe fills the bottleneck, each packet waits at least as long as the
        one before it. A first packet that arrived later than its successors' timing
        allows was held elsewhere (a receiver that stalled and stamped a batch at once,
        Wi-Fi aggregation): counting it shortens the arrival span and reads the probe's
        own send rate as capacity, which moves a 300 kbit/s viewer up a layer it cannot
        carry. The rest of the cluster still measures the link.

        Delays that fall across the whole cluster are a queue draining faster than the
        probe was sent (after an outage, or a radio delivering in batches): at most
        ``MAX_HELD_FRACTION`` of the packets go, or nothing would be left to measure.
        """
        delays = [(r.arrival_ms or 0.0) - r.send_ms for r in recv]
        n = len(recv)
        later_min = [math.inf] * n  # the smallest delay among the packets after i
        for i in range(n - 2, -1, -1):
            later_min[i] = min(later_min[i + 1], delays[i + 1])
        start = 0
        while start < n - 1 and start < MAX_HELD_FRACTION * n and delays[start] > later_min[start] + LATE_ARRIVAL_MS:
            start += 1
        return recv[start:]


class ProbeController:
    """Decides when to probe and at what rate; see the module docstring."""

    def __init__(
        self,
        *,
        max_bps: float = 20_000_000,
        initial_multipliers: tuple[float, ...] = (3.0, 6.0),
        further_multiplier: float = 2.0,
        further_threshold: float = 0.7,
        interval_ms: float = 3000.0,
        quiet_after_decrease_ms: float = 1000.0,
    ) -> None:
        self.max_bps = float(max_bps)
        self.initial_multipliers = initial_multipliers
        self.further_multiplier = further_multiplier
        self.further_threshold = further_threshold
        self.interval_ms = interval_ms
        self.quiet_after_decrease_ms = quiet_after_decrease_ms
        self.desired_bps: float | None = None
        self.sent_clusters = 0
        self._next_id = 1
        self._pending: list[ProbeCluster] = []
        self._initial_done = False
        self._in_flight: dict[int, ProbeCluster] = {}
        self._last_probe_ms: float | None = None
        self._last_decrease_ms: float | None = None
        self.hurry = False  # the estimate fell far below what the link carried lately

    def set_desired_bps(self, bps: float | None) -> None:
        self.desired_bps = bps

    def on_decrease(self, now_ms: float) -> None:
        self._last_decrease_ms = now_ms
        self._pending.clear()

    def probe_now(self, bps: float, now_ms: float) -> int:
        """Probe ``bps`` (capped at the desired rate) next, regardless of recent cuts;
        returns the cluster's id.

        For the return from an outage: the cluster lasts ``OUTAGE_PROBE_DURATION_MS``.
        """
        self._last_decrease_ms = None
        self._initial_done = True
        self._pending.clear()
        return self._schedule(min(bps, self._cap()), now_ms, OUTAGE_PROBE_DURATION_MS)

    def outstanding(self, cluster_id: int) -> bool:
        """The cluster is pending or sent, and its result not in yet."""
        return cluster_id in self._in_flight or any(c.id == cluster_id for c in self._pending)

    @property
    def busy(self) -> bool:
        """A cluster is pending or sent and its result not in yet."""
        return bool(self._pending or self._in_flight)

    def _cap(self) -> float:
        cap = self.max_bps
        if self.desired_bps is not None:
            cap = min(cap, self.desired_bps)
        return cap

    def _schedule(self, bps: float, now_ms: float, duration_ms: float = MIN_PROBE_DURATION_MS) -> int:
        cluster = ProbeCluster.make(self._next_id, bps, now_ms, duration_ms)
        self._next_id += 1
        self._pending.append(cluster)
        return cluster.id

    def _recently_decreased(self, now_ms: float) -> bool:
        last = self._last_decrease_ms
        return last is not None and now_ms - last < self.quiet_after_decrease_ms

    def _plan(self, estimate_bps: float, now_ms: float) -> None:
        cap = self._cap()
        if estimate_bps >= cap * 0.95:
            return
        if self._recently_decreased(now_ms):
            # Right after a cut the bottleneck still holds a queue: a probe burst would
            # only lengthen it. This holds for the start-up pair too, which is pending
            # until the estimate first falls short of the desired rate, and that is
            # often exactly at a cut.
            return
        if not self._initial_done:
            self._initial_done = True
            for m in self.initial_multipliers:
                self._schedule(min(estimate_bps * m, cap), now_ms)
                if estimate_bps * m >= cap:
                    break
            return
        if self._in_flight:
            return
        last = self._last_probe_ms
        interval = HURRY_INTERVAL_MS if self.hurry else self.interval_ms
        if last is None or now_ms - last >= interval:
            self._schedule(min(estimate_bps * self.further_multiplier, cap), now_ms)

    def next_probe(self, estimate_bps: float, now_ms: float) -> ProbeCluster | None:
        """The next cluster to send now, if any (each is returned once)."""
        if not self._pending:
            self._plan(estimate_bps, now_ms)
        if not self._pending:
            return None
        cluster = self._pending.pop(0)
        self._in_flight[cluster.id] = cluster
        self._last_probe_ms = now_ms
        self.sent_clusters += 1
        return cluster

    def on_result(self, cluster_id: int, result_bps: float | None, estimate_bps: float, now_ms: float) -> None:
        """A cluster finished; maybe probe further at once (exponential search)."""
        cluster = self._in_flight.pop(cluster_id, None)
        if cluster is None or result_bps is None:
            return
        cap = self._cap()
        if (
            not self._pending
            and not self._in_flight
            and not self._recently_decreased(now_ms)
            and result_bps >= self.further_threshold * cluster.bitrate_bps
            and cluster.bitrate_bps < cap * 0.95
            and estimate_bps < cap * 0.95
        ):
            self._schedule(min(max(estimate_bps, result_bps) * self.further_multiplier, cap), now_ms)
