"""Group packets into send-time bursts and compute inter-group deltas.

Why groups and not packets: a video frame leaves the pacer as a short train of
packets, and the receiver's per-packet arrival spacing within a train says more
about the sender's pacer and the OS than about the bottleneck. GCC
(draft-ietf-rmcat-gcc-02 §5.2, libwebrtc ``InterArrival``) therefore compares
*groups*: packets sent within ``group_ms`` (5 ms) of the group's first packet.
Packets that arrive in a burst (within ``burst_ms`` of the previous arrival and
*earlier* than their send spacing would predict, i.e. they were queued together
somewhere and released at once, as Wi-Fi aggregation does) join the current
group too, so such bursts do not read as a drop in queueing delay.

Sans-I/O: feed ``(send_ms, arrival_ms, size)`` of received packets in send
order; ``add`` returns a ``GroupDelta`` each time a group completes and a
previous group exists. Send times are on the sender's clock, arrival times on
the receiver's; only differences within each clock are used.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GroupDelta", "InterArrival"]

# A group whose arrival span exceeds this is closed even if the burst rule holds.
MAX_BURST_DURATION_MS = 100.0
# Arrival-vs-send jumps larger than this mean a clock or path reset: start over.
ARRIVAL_OFFSET_RESET_MS = 3000.0
# Consecutive reordered groups before the state is reset.
MAX_REORDERED_GROUPS = 3


@dataclass(slots=True)
class GroupDelta:
    """Deltas between the last packets of two consecutive groups."""

    send_delta_ms: float
    arrival_delta_ms: float
    arrival_ms: float  # arrival of the last packet of the newer group (receiver clock)
    send_ms: float  # send time of the last packet of the newer group
    size_delta: int  # bytes of the newer group minus bytes of the older one


@dataclass(slots=True)
class _Group:
    first_send_ms: float
    last_send_ms: float
    first_arrival_ms: float
    last_arrival_ms: float
    size: int


class InterArrival:
    """Send-time grouping (5 ms) with burst merging; see the module docstring."""

    def __init__(self, group_ms: float = 5.0, burst_ms: float = 5.0) -> None:
        self.group_ms = group_ms
        self.burst_ms = burst_ms
        self.resets = 0
        self._prev: _Group | None = None
        self._cur: _Group | None = None
        self._reordered = 0

    def reset(self) -> None:
        self._prev = None
        self._cur = None
        self._reordered = 0
        self.resets += 1

    def add(self, send_ms: float, arrival_ms: float, size: int) -> GroupDelta | None:
        """Add one received packet (in send order); a delta when a group completes."""
        cur = self._cur
        if cur is None:
            self._cur = _Group(send_ms, send_ms, arrival_ms, arrival_ms, size)
            return None
        first_send = cur.first_send_ms
        if send_ms < first_send:
            return None  # sent before the current group: out of order, ignore
        # In the group: sent within group_ms of its first packet, or a burst (arrived
        # close to the previous one, and sooner than the send spacing says).
        if send_ms - first_send <= self.group_ms or (
            (arrival_ms - cur.last_arrival_ms) - (send_ms - cur.last_send_ms) < 0
            and arrival_ms - cur.last_arrival_ms <= self.burst_ms
            and arrival_ms - cur.first_arrival_ms < MAX_BURST_DURATION_MS
        ):
            if send_ms > cur.last_send_ms:
                cur.last_send_ms = send_ms
            if arrival_ms > cur.last_arrival_ms:
                cur.last_arrival_ms = arrival_ms
            cur.size += size
            return None
        out: GroupDelta | None = None
        prev = self._prev
        if prev is not None:
            send_delta = cur.last_send_ms - prev.last_send_ms
            arrival_delta = cur.last_arrival_ms - prev.last_arrival_ms
            if arrival_delta - send_delta >= ARRIVAL_OFFSET_RESET_MS:
                self.reset()
                self._cur = _Group(send_ms, send_ms, arrival_ms, arrival_ms, size)
                return None
            if arrival_delta < 0:
                self._reordered += 1
                if self._reordered >= MAX_REORDERED_GROUPS:
                    self.reset()
                    self._cur = _Group(send_ms, send_ms, arrival_ms, arrival_ms, size)
                    return None
                # drop the reordered group, keep prev as the reference
                self._cur = _Group(send_ms, send_ms, arrival_ms, arrival_ms, size)
                return None
            self._reordered = 0
            out = GroupDelta(
                send_delta, arrival_delta, cur.last_arrival_ms, cur.last_send_ms, cur.size - prev.size
            )
        self._prev = cur
        self._cur = _Group(send_ms, send_ms, arrival_ms, arrival_ms, size)
        return out
