"""Which simulcast layer one subscriber gets of one track, and whether it gets any.

Every input to that decision lands here and nowhere else:

* the allocator's output for the subscriber's bandwidth (`set_allocation`: a layer, or
  None to pause the track),
* the subscriber's settings: a pinned maximum layer (`pin`), the rendered size
  (`set_rendered_size`, through `layer_for_size`), on/off (`set_enabled`),
* what the publisher actually sends (`select`, on the engine tick),
* each packet (`accept`): forward it, drop it, or start forwarding its layer, which
  happens only on the first packet of a keyframe of the target layer.

The selector asks for keyframes through its `KeyframeHost` (the published track, which
coalesces PLIs per layer) while a switch waits for one. It never touches packet bytes:
the DownTrack acts on its verdict and a `StreamRewriter` keeps the numbering continuous
(LiveKit's `VideoLayerSelector` and `Forwarder`, mediasoup's `SimulcastConsumer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from media.lanes import SelectorState
from media.rtp.keyframe import KeyframeWaiter

# Verdicts of `LayerSelector.accept`, per packet.
DROP = 0  # not forwarded
FORWARD = 1  # the layer being forwarded
START = 2  # first packet forwarded (or first after a pause): the rewriter starts here
SWITCH = 3  # first packet of another layer: the rewriter restarts here

# Assumed full resolution while the top layer's keyframes have not told it.
DEFAULT_FULL_SIZE = (1280, 720)
SIZE_SLACK = 0.9  # a layer 10% smaller than the rendered size still covers it


class KeyframeHost(Protocol):
    """Where keyframe requests go: the published track (coalesced per layer)."""

    def request_keyframe(self, layer: int, now_ms: float) -> None: ...


class LayerSize(Protocol):
    """A layer's resolution, as its keyframes carry it (None until one arrived)."""

    index: int
    width: int | None
    height: int | None


def layer_for_size(layers: Sequence[LayerSize], width: int, height: int) -> int | None:
    """Smallest layer whose resolution covers a rendered `width` x `height`.

    None (no cap) when either side is 0. Layers whose resolution is not known yet are
    taken as the top layer's (or 1280x720) halved per step down, as simulcast sends them.
    """
    if not width or not height:
        return None
    full = layers[-1]
    full_w = full.width or DEFAULT_FULL_SIZE[0]
    full_h = full.height or DEFAULT_FULL_SIZE[1]
    for layer in layers:
        scale = 2 ** (len(layers) - 1 - layer.index)
        w = layer.width or full_w // scale
        h = layer.height or full_h // scale
        if w >= width * SIZE_SLACK and h >= height * SIZE_SLACK:
            return layer.index
    return len(layers) - 1


class LayerSelector(SelectorState):
    """Layer state and rules for one DownTrack (audio: one layer, always forwarded).

    `current`, `target`, `allocated`, `blocked` and `switch_ext_seq` are the base's
    (`media.lanes`): a video lane reads them from C to give most packets this class's
    verdict without calling `accept`.
    """

    __slots__ = (
        "host",
        "layer_count",
        "is_video",
        "pinned",
        "size_cap",
        "paused",
        "enabled",
        "closed",
        "waiter",
    )

    def __init__(self, host: KeyframeHost, layer_count: int, *, is_video: bool) -> None:
        self.host = host
        self.layer_count = layer_count
        self.is_video = is_video
        self.current: int | None = None  # layer being forwarded; None: nothing yet
        self.target = layer_count - 1  # layer to forward; a switch waits for its keyframe
        self.allocated = layer_count - 1  # the allocator's choice for the bandwidth
        self.pinned: int | None = None  # max layer the subscriber asked for
        self.size_cap: int | None = None  # smallest layer covering its rendered size
        self.paused = False  # by the allocator: the bandwidth cannot carry the track
        self.enabled = True  # by the subscriber: false while its tile is hidden
        self.closed = False
        self.blocked = False  # paused, disabled or closed: every packet is dropped
        self.switch_ext_seq = 0  # first input seq of the layer being forwarded
        self.waiter = KeyframeWaiter()
        if is_video:
            self.waiter.need(0.0)

    # -- per packet ----------------------------------------------------------------
    def accept(self, index: int, ext_seq: int, keyframe: bool, start: bool) -> int:
        """The verdict for one packet of layer `index` (`start`: first packet of its
        frame's first partition, or no codec framing): DROP, FORWARD, START or SWITCH.
        START and SWITCH make `index` the current layer from this packet on."""
        if self.blocked:
            return DROP
        current = self.current
        if index != current:
            if index != self.target or not start or not (keyframe or not self.is_video):
                return DROP
            self.current = index
            self.switch_ext_seq = ext_seq
            if keyframe:
                self.waiter.on_keyframe()
            return START if current is None else SWITCH
        if ext_seq < self.switch_ext_seq:
            return DROP  # a late packet from before the switch point would collide
        if self.allocated < index and self.target != index:
            # The allocator cut this subscriber below the layer it is on: the link is
            # congested. Shed the layer now (a short freeze until the lower layer's
            # keyframe) instead of filling the bottleneck queue while waiting for it.
            return DROP
        if keyframe:
            self.waiter.on_keyframe()
        return FORWARD

    # -- the allocator -------------------------------------------------------------
    def set_allocation(self, layer: int | None) -> bool:
        """The allocator's layer for this track, or None to pause it for bandwidth;
        True when that paused or resumed the track."""
        if layer is None:
            return self.set_paused(True)
        self.allocated = layer
        return self.set_paused(False)

    def set_paused(self, paused: bool) -> bool:
        """Pause/resume for bandwidth; True when the state changed. A resumed track
        starts again on a keyframe."""
        if paused == self.paused:
            return False
        self.paused = paused
        if paused:
            self.current = None
        self._update_blocked()
        return True

    # -- the subscriber's settings ---------------------------------------------------
    def pin(self, layer: int | None) -> None:
        """The highest layer the subscriber wants (None: no pin)."""
        self.pinned = None if layer is None else max(0, min(layer, self.layer_count - 1))

    def set_rendered_size(self, layers: Sequence[LayerSize], width: int, height: int) -> None:
        """The size the subscriber renders the track at (0: unknown, no cap)."""
        self.size_cap = layer_for_size(layers, width, height)

    def set_enabled(self, enabled: bool) -> bool:
        """The subscriber's own on/off (a hidden tile); True when the state changed.

        Disabled, the track is forwarded nothing and counts for nothing: the allocator
        gives its share to other tracks and dynacast may pause its layers. It resumes on
        a keyframe, which ``on_timer`` asks for.
        """
        if enabled == self.enabled:
            return False
        self.enabled = enabled
        self.current = None
        self._update_blocked()
        return True

    def close(self) -> None:
        self.closed = True
        self._update_blocked()

    def _update_blocked(self) -> None:
        self.blocked = bool(self.paused or not self.enabled or self.closed)

    @property
    def max_layer(self) -> int:
        """The subscriber's cap: the lower of its pin and its rendered size."""
        cap = self.layer_count - 1
        if self.pinned is not None:
            cap = min(cap, self.pinned)
        if self.size_cap is not None:
            cap = min(cap, self.size_cap)
        return cap

    @property
    def active(self) -> bool:
        """Forwarding, or waiting to: neither paused for bandwidth nor disabled."""
        return not self.blocked

    @property
    def wanted_layer(self) -> int | None:
        """The highest layer this subscriber needs the publisher to send (dynacast);
        None when it needs none."""
        if self.blocked:
            return None
        return min(self.allocated, self.max_layer)

    # -- target layer and keyframes --------------------------------------------------
    def set_target(self, index: int, now_ms: float) -> None:
        """Switch to `index` at its next keyframe, asked for now."""
        index = max(0, min(index, self.layer_count - 1))
        if index == self.target:
            return
        self.target = index
        if index != self.current:
            self.host.request_keyframe(index, now_ms)

    def select(self, available: Sequence[int], now_ms: float) -> None:
        """Target the best layer the publisher is actually sending (`available`) within
        the allocation and the cap, so a layer it stopped (dynacast, its own
        congestion) is left at once; the lowest one sent if none fits."""
        if not self.is_video or self.layer_count < 2 or not self.enabled or not available:
            return
        cap = min(self.max_layer, self.allocated)
        fitting = [i for i in available if i <= cap]
        best = max(fitting) if fitting else min(available)
        if best != self.target:
            self.set_target(best, now_ms)

    def request_keyframe(self, now_ms: float) -> None:
        """A keyframe of the layer being forwarded (or the one awaited)."""
        if self.is_video:
            self.host.request_keyframe(self.current if self.current is not None else self.target, now_ms)

    def on_timer(self, now_ms: float) -> None:
        """Re-ask for the target's keyframe while a switch or a resume waits for it."""
        if not self.is_video or self.blocked:
            return
        if self.current != self.target or self.current is None:
            self.waiter.need(now_ms)
        if self.waiter.poll(now_ms):
            self.host.request_keyframe(self.target, now_ms)
