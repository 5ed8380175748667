"""What each simulcast layer of a track is expected to cost: the allocator's prices.

A layer's price is its recent peak rate (decaying with a 4 s half-life), not the rate
of this instant: a browser's layer swings +-30 % with motion and its own estimate, and
priced at a dip it looks affordable to a link that cannot carry it a second later (a
300 kbit/s viewer would flap between q and h). A layer paused by dynacast measures 0,
so its last price is kept; it must still be priced, or nobody would ever ask for it
back. Updating prices is a measurement with state (`update_layer_prices`), done once
per allocation round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from media.rtp.stream_recv import RtpStreamRecv

from .allocator import NOMINAL_LAYER_BPS

PRICE_HALF_LIFE_MS = 4000.0  # how fast a layer's price forgets a peak
# A spatial layer has 4x the pixels of the one below; encoders give it ~2.7-3x the bits
# (Chrome's simulcast ladder, libvpx at default settings). Used as a floor on its price:
# at 2x, h mid-ramp looked affordable to a 300 kbit/s viewer whose estimate reached 280k.
SPATIAL_PRICE_RATIO = 2.5
MIN_MEASURED_BPS = 20_000.0  # below this a layer is not flowing: its price stays


class PricedLayer(Protocol):
    """A published layer as pricing sees it (`published_track.Layer`)."""

    index: int
    stream: RtpStreamRecv | None
    active: bool  # False while dynacast pauses it
    width: int | None
    last_bps: float  # its price: updated here
    price_ms: float  # when `last_bps` was last measured


def update_layer_prices(layers: Sequence[PricedLayer], now_ms: float) -> list[float]:
    """Measure each layer, update its price, and return the prices, lowest layer first:
    its recent peak when flowing, else its last price, else a nominal rate."""
    rates = []
    for layer in layers:
        measured = layer.stream.bitrate_bps(now_ms) if layer.stream is not None else 0.0
        # Only a flowing, enabled layer updates its price: a layer dynacast just
        # paused fades over the rate window and would look nearly free.
        if layer.active and measured > max(MIN_MEASURED_BPS, 0.5 * layer.last_bps):
            age = max(0.0, now_ms - layer.price_ms)
            layer.last_bps = max(measured, layer.last_bps * 0.5 ** (age / PRICE_HALF_LIFE_MS))
            layer.price_ms = now_ms
        if layer.last_bps:
            rates.append(layer.last_bps)
        elif len(layers) == 1:
            rates.append(NOMINAL_LAYER_BPS[1])
        else:
            rates.append(NOMINAL_LAYER_BPS[min(layer.index + 3 - len(layers), 2)])
    for i in range(1, len(rates)):
        # A layer still ramping up (a browser starts its upper layers low and raises
        # them with its own estimate) must not look cheap: priced at its first seconds,
        # h would look affordable to a 300 kbit/s viewer that must drop back once h
        # reaches its real rate. Floor: 2.5x the layer below when it has a larger
        # resolution (or the resolutions are unknown).
        below, this = layers[i - 1].width, layers[i].width
        spatial = below is None or this is None or this > 1.4 * below
        floor = rates[i - 1] * SPATIAL_PRICE_RATIO if spatial else rates[i - 1] + 1.0
        rates[i] = max(rates[i], floor)
    return rates
