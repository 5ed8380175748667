"""Splits one subscriber's bandwidth estimate over its tracks, by priority.

Pure policy (sans-I/O, takes `now_ms`), propose-then-commit like mediasoup's
`DistributeAvailableOutgoingBitrate`: audio first (never starved), then every video
track gets its lowest layer in priority order (so nobody is paused while a more
important track takes a higher layer), then, most important first, each track climbs
to the best layer the remaining budget affords. Hysteresis keeps layers from flapping:
going up needs headroom and a quiet period since the last change; going down a layer
happens as soon as the budget says so, but a track is paused only when the budget falls
a headroom below its lowest layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Priorities: lower is more important.
PRIO_AUDIO = 0
PRIO_SCREEN = 1
PRIO_SPEAKER = 2
PRIO_VIDEO = 3

# Nominal bitrates of Chrome-like simulcast layers (q, h, f), used until measured.
NOMINAL_LAYER_BPS = (150_000, 500_000, 1_500_000)
UP_HEADROOM = 1.15
UP_HOLD_MS = 2000.0
# A paused track comes back to its lowest layer sooner: a pause is often a backlog the
# congestion window held for a moment (pacer pushback), and every further second
# paused is a second of frozen video; headroom still keeps it from flapping.
RESUME_HOLD_MS = 500.0


@dataclass(slots=True)
class AllocTrack:
    """What the allocator needs to know about one DownTrack."""

    key: str
    kind: str  # "audio" | "video"
    priority: int
    layer_bps: list[float]  # expected bitrate of each layer, lowest first
    max_layer: int  # the subscriber's cap (adaptive stream / pinned)
    current: int | None  # layer the track is on now (None: paused / not started)


@dataclass(slots=True)
class Allocation:
    layers: dict[str, int | None] = field(default_factory=dict)  # None: paused for bandwidth
    used_bps: float = 0.0
    wanted_bps: float = 0.0  # what it would take to give everyone their max layer


class Allocator:
    """Per-subscriber allocator with hysteresis state."""

    def __init__(self) -> None:
        self._last_change_ms: dict[str, float] = {}

    def allocate(self, budget_bps: float, tracks: list[AllocTrack], now_ms: float) -> Allocation:
        result = Allocation()
        remaining = budget_bps
        video: list[AllocTrack] = []
        for track in tracks:
            if track.kind == "audio":
                rate = track.layer_bps[0] if track.layer_bps else 40_000.0
                remaining -= rate  # audio is never starved
                result.used_bps += rate
                result.wanted_bps += rate
                result.layers[track.key] = 0
            else:
                video.append(track)
        video.sort(key=lambda t: (t.priority, t.key))
        chosen: dict[str, int | None] = {t.key: None for t in video}
        for track in video:
            result.wanted_bps += track.layer_bps[min(track.max_layer, len(track.layer_bps) - 1)]
        # Round 0: the lowest layer for everyone, most important first.
        for track in video:
            need = self._need(track, 0, now_ms)
            if need <= remaining:
                chosen[track.key] = 0
                remaining -= track.layer_bps[0]
        # Then, most important first, each track climbs as high as the budget allows.
        for track in video:
            layer = chosen[track.key]
            top = min(track.max_layer, len(track.layer_bps) - 1)
            while layer is not None and layer < top:
                step = track.layer_bps[layer + 1] - track.layer_bps[layer]
                if self._need(track, layer + 1, now_ms, step) > remaining:
                    break
                layer += 1
                remaining -= step
            chosen[track.key] = layer
        for track in video:
            layer = chosen[track.key]
            if layer != track.current:
                self._last_change_ms[track.key] = now_ms
            result.layers[track.key] = layer
            if layer is not None:
                result.used_bps += track.layer_bps[layer]
        return result

    def _need(self, track: AllocTrack, layer: int, now_ms: float, step: float | None = None) -> float:
        """Bandwidth required to put `track` on `layer`, with hysteresis for upgrades."""
        cost = track.layer_bps[layer] if step is None else step
        current = track.current
        if current is not None and layer == 0:
            # Pausing costs a freeze and a keyframe to resume (a burst that can itself
            # dent the estimate), so the lowest layer is kept until the budget falls a
            # headroom below its price: resuming needs a headroom above it.
            return cost / UP_HEADROOM
        if current is not None and layer <= current:
            return cost  # keeping what it has: no headroom required
        since = now_ms - self._last_change_ms.get(track.key, -1e12)
        if since < (RESUME_HOLD_MS if current is None and layer == 0 else UP_HOLD_MS):
            return float("inf")  # just changed: wait before going up again
        return cost * UP_HEADROOM

    def forget(self, key: str) -> None:
        self._last_change_ms.pop(key, None)
