"""Asking again for video packets still missing, for aiortc receivers.

aiortc's receiver NACKs every packet still missing whenever a *new* gap appears, and at
no other time. When the NACK or its retransmission is lost as well, the packet is asked
for again only at the next loss (on a lossy link a few hundred ms later; on a clean
one, never), while the jitter buffer holds every frame behind it. Browsers ask again
every round trip. ``RepeatingNackGenerator`` keeps aiortc's generator and remembers
when each missing packet was last asked for; ``repeat_nacks`` asks again, every
``interval_s``, for those asked for longer ago than that. Ferry retransmits a packet at
most once per round trip, so asking more often than that costs it nothing.

``install(receiver)`` puts one into an aiortc video ``RTCRtpReceiver``, whose generator
is a private attribute: this depends on aiortc's internals and leaves the receiver as
it was when they change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt

from . import video_jitter

__all__ = ["INTERVAL_S", "RepeatingNackGenerator", "generator_of", "install", "repeat_nacks"]

logger = logging.getLogger(__name__)

INTERVAL_S = 0.1  # ask again after this long (and check this often)
_ATTR = "_RTCRtpReceiver__nack_generator"


class RepeatingNackGenerator(NackGenerator):
    """aiortc's NACK generator, plus when each missing packet was last asked for."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self.ssrc: int | None = None
        self._asked: dict[int, float] = {}
        self.repeated = 0  # packets asked for again

    def add(self, packet: RtpPacket) -> bool:
        self.ssrc = packet.ssrc
        missed = super().add(packet)
        if missed:  # the receiver NACKs everything still missing now
            now = self._clock()
            for seq in self.missing:
                self._asked[seq] = now
        return missed

    def forget_before(self, seq: int) -> None:
        """Stop asking for missing packets older than ``seq`` (the jitter buffer gave up
        on them: a keyframe after them is what the decoder waits for now)."""
        stale = [s for s in self.missing if uint16_gt(seq, s)]
        for s in stale:
            self.missing.discard(s)
            self._asked.pop(s, None)

    def due(self, interval_s: float = INTERVAL_S) -> list[int]:
        """The missing packets last asked for ``interval_s`` ago or more (marked asked now)."""
        now = self._clock()
        asked, missing = self._asked, self.missing
        for seq in [s for s in asked if s not in missing]:
            del asked[seq]  # arrived, or aged out of the generator's history
        out = sorted(s for s in missing if now - asked.get(s, now) >= interval_s)
        for seq in out:
            asked[seq] = now
        self.repeated += len(out)
        return out


def generator_of(receiver: Any) -> RepeatingNackGenerator | None:
    """The receiver's ``RepeatingNackGenerator``, if it has one."""
    generator = getattr(receiver, _ATTR, None)
    return generator if isinstance(generator, RepeatingNackGenerator) else None


def install(receiver: Any) -> RepeatingNackGenerator | None:
    """Give an aiortc video ``RTCRtpReceiver`` a ``RepeatingNackGenerator`` (before media
    flows). Returns it, or None when the receiver's internals are not as expected."""
    current = getattr(receiver, _ATTR, None)
    if isinstance(current, RepeatingNackGenerator):
        return current
    if type(current) is not NackGenerator or current.max_seq is not None:
        return None
    generator = RepeatingNackGenerator()
    setattr(receiver, _ATTR, generator)
    return generator


async def repeat_nacks(receivers: Callable[[], list[Any]], interval_s: float = INTERVAL_S) -> None:
    """Every ``interval_s``, NACK again what each receiver's generator says is due.
    ``receivers`` lists the video receivers now (the transceivers change with the call)."""
    while True:
        await asyncio.sleep(interval_s)  # the repeat's own clock, not a wait for a condition
        for receiver in receivers():
            generator = generator_of(receiver)
            if generator is None or generator.ssrc is None:
                continue
            buffer = video_jitter.buffer_of(receiver)
            if buffer is not None and buffer.origin is not None:
                generator.forget_before(buffer.origin)
            seqs = generator.due(interval_s)
            if seqs:
                try:
                    await receiver._send_rtcp_nack(generator.ssrc, seqs)
                except Exception:  # noqa: BLE001 - a receiver being torn down; the rest go on
                    logger.debug("repeated NACK not sent", exc_info=True)
