"""A video jitter buffer for aiortc receivers that gives up on a packet that is not coming.

aiortc's video jitter buffer hands frames to the decoder strictly in sequence order: a
packet that never arrives holds back every frame after it until 512 newer packets
have pushed it out (4 s at 1 Mbit/s, 15 s at 300 kbit/s), and then releases the held
frames at once, seconds late. A packet can be missing for good: Ferry never got it
from the publisher either, or (aiortc's NACK generator forgets a packet 128 packets
later) every request for it was lost. On lossy Wi-Fi (``ferry netem run lossy-wifi``:
bursty loss both ways) an aiortc viewer froze for 4.7-9.1 s that way, from one or two
such packets; ``clients.nack_repeat`` makes the second cause rare.

Browsers do otherwise: a keyframe makes the frames before it obsolete, and they ask
for one instead of waiting for a packet that retransmission did not bring.
``RecoveringJitterBuffer`` does the same. A keyframe that arrives behind a hole is
started from at once. Once the oldest frame has been held behind a hole for
``give_up_ms`` (or the hole fell out of the NACK generator's history), it skips to the
next keyframe already in the buffer; without one, it drops what it holds, asks for a keyframe (the PLI aiortc sends when
``add`` says so) and lets no frame through until a keyframe comes, asking again every
``pli_interval_ms`` while none does. Delta frames after a lost one would only decode
into corrupt pictures.

``install(receiver)`` puts one into an aiortc ``RTCRtpReceiver`` for video; the
receiver keeps its buffer in a private attribute, so this depends on aiortc's
internals and leaves the receiver as it was when they change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket
from aiortc.utils import uint16_add

__all__ = ["GIVE_UP_MS", "RecoveringJitterBuffer", "buffer_of", "install", "is_keyframe_data"]

# How long the oldest frame may wait behind a missing packet: a retransmission takes a
# round trip (600 ms on a GEO satellite link), and one NACK may be lost.
GIVE_UP_MS = 1000.0
PLI_INTERVAL_MS = 500.0  # while waiting for a keyframe, ask again this often
CAPACITY = 512  # aiortc's own video buffer size
_VP8_START_CODE = b"\x9d\x01\x2a"
_H264_START = b"\x00\x00\x00\x01"


def is_keyframe_data(data: bytes) -> bool:
    """Whether depayloaded video (a frame, or the first packet of one) starts a keyframe.

    aiortc depayloads H.264 to Annex B (each NAL after a 4-byte start code): a keyframe
    holds an SPS or an IDR slice. VP8 starts with the frame tag, whose lowest bit is 0
    on a keyframe, followed by the keyframe start code."""
    if data.startswith(_H264_START):
        pos = 0
        while (pos := data.find(_H264_START, pos)) >= 0 and pos + 4 < len(data):
            if data[pos + 4] & 0x1F in (5, 7):
                return True
            pos += 4
        return False
    return len(data) >= 6 and not data[0] & 0x01 and data[3:6] == _VP8_START_CODE


class RecoveringJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, plus giving up on holes (see the module docstring).

    ``clock`` returns seconds (``time.monotonic``); tests pass their own.
    """

    def __init__(
        self,
        capacity: int = CAPACITY,
        *,
        give_up_ms: float = GIVE_UP_MS,
        pli_interval_ms: float = PLI_INTERVAL_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.give_up_ms = give_up_ms
        self.pli_interval_ms = pli_interval_ms
        self._clock = clock
        self._held_origin: int | None = None  # the origin the oldest frame waits at ...
        self._held_since = 0.0  # ... since when (s)
        self.awaiting_keyframe = False
        self._pli_at = 0.0
        self.gave_up = 0  # holes waited out (``give_up_ms``, or out of the NACK history)
        self.skipped_to_keyframe = 0  # holes a keyframe after them ended
        self.dropped_frames = 0  # complete frames not decodable without what was lost

    @property
    def origin(self) -> int | None:
        """The oldest sequence number still wanted."""
        return self._origin

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = self._clock()
        if self._origin is not None and is_keyframe_data(getattr(packet, "_data", b"")):
            # A keyframe starts here: what is held before it and still misses a packet
            # is not worth waiting for (and after a give-up, it is the keyframe asked for).
            delta = uint16_add(packet.sequence_number, -self._origin)
            if 0 < delta < self._capacity:
                if self.awaiting_keyframe:
                    self.remove(delta)
                elif self._hole_before(packet.sequence_number) is not None:
                    self.remove(delta)
                    self.skipped_to_keyframe += 1
        pli, frame = super().add(packet)
        if frame is not None:
            if self.awaiting_keyframe:
                if is_keyframe_data(frame.data):
                    self.awaiting_keyframe = False
                else:
                    self.dropped_frames += 1
                    frame = None
            self._held_origin = None
            return pli or self._pli_due(now), frame
        if self._origin != self._held_origin:
            self._held_origin, self._held_since = self._origin, now
        # Looked for only when it could matter: held long enough, or enough packets
        # behind the origin for a hole there to have left the NACK history.
        held_long = (now - self._held_since) * 1000.0 >= self.give_up_ms
        if self._origin is not None and (
            held_long or uint16_add(packet.sequence_number, -self._origin) >= RTP_HISTORY_SIZE
        ):
            hole = self._hole_before(packet.sequence_number)
            if hole is not None and (held_long or hole >= RTP_HISTORY_SIZE):
                return self._give_up(now) or pli, None
        return pli or self._pli_due(now), None

    def _hole_before(self, seq: int) -> int | None:
        """How far behind ``seq`` the oldest missing packet is, or None without a hole."""
        if self._origin is None:
            return None
        delta = uint16_add(seq, -self._origin)
        if not 0 < delta < self._capacity:
            return None
        packets, cap, origin = self._packets, self._capacity, self._origin
        for i in range(delta):
            if packets[(origin + i) % cap] is None:
                return delta - i
        return None

    def _give_up(self, now: float) -> bool:
        """Skip the hole: to the next keyframe held, else drop everything and ask for one.
        Returns whether to send a PLI."""
        self.gave_up += 1
        self._held_origin = None
        packets, cap, origin = self._packets, self._capacity, self._origin
        assert origin is not None
        last = -1
        for i in range(1, cap):
            p = packets[(origin + i) % cap]
            if p is None:
                continue
            last = i
            if is_keyframe_data(getattr(p, "_data", b"")):
                self.remove(i)
                self.skipped_to_keyframe += 1
                self.awaiting_keyframe = False
                return False
        self.remove(last + 1 if last >= 0 else 1)
        self.awaiting_keyframe = True
        self._pli_at = now
        return True

    def _pli_due(self, now: float) -> bool:
        if not self.awaiting_keyframe or (now - self._pli_at) * 1000.0 < self.pli_interval_ms:
            return False
        self._pli_at = now
        return True


_ATTR = "_RTCRtpReceiver__jitter_buffer"


def buffer_of(receiver: Any) -> RecoveringJitterBuffer | None:
    """The receiver's ``RecoveringJitterBuffer``, if it has one."""
    buffer = getattr(receiver, _ATTR, None)
    return buffer if isinstance(buffer, RecoveringJitterBuffer) else None


def install(receiver: Any, **options: Any) -> RecoveringJitterBuffer | None:
    """Give an aiortc video ``RTCRtpReceiver`` a ``RecoveringJitterBuffer`` (before media
    flows). Returns it, or None when the receiver's internals are not as expected."""
    current = getattr(receiver, _ATTR, None)
    if isinstance(current, RecoveringJitterBuffer):
        return current
    if not isinstance(current, JitterBuffer) or current._origin is not None or not current._is_video:
        return None
    buffer = RecoveringJitterBuffer(current.capacity, **options)
    setattr(receiver, _ATTR, buffer)
    return buffer
