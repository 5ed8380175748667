"""Wrap an Opus stream into RFC 2198 RED payloads (redundancy toward lossy links).

Why: Opus in-band FEC is a low-bitrate copy of the previous frame only, and the
publisher decides whether to send it. RED repeats whole previous frames, so a
subscriber on a lossy leg can rebuild up to ``distance`` consecutive losses at
full quality, and Ferry can add it per subscriber without transcoding (as
Chrome's ``audio/red`` does for PT 63). The receive side is
``AudioJitterBuffer.put_red``.
"""

from __future__ import annotations

from media.lanes import RedHistory
from media.wire.red import build_red

MAX_OFFSET = (1 << 14) - 1  # 14-bit timestamp offset field
MAX_BLOCK = (1 << 10) - 1  # 10-bit length field


class RedEncoder(RedHistory):
    """Stateful per-stream encoder: each call returns the RED payload for one packet.

    Redundant blocks are the previous ``distance`` frames (oldest first), each
    skipped if it is too old for the 14-bit offset or too big for the 10-bit
    length, or if the whole payload would exceed ``max_payload`` bytes (then
    the oldest blocks go first). Timestamps wrap at 32 bits.
    """

    def __init__(self, distance: int = 1, opus_pt: int = 111, max_payload: int = 1200) -> None:
        if distance not in (1, 2):
            raise ValueError("distance must be 1 or 2")
        if not 0 <= opus_pt < 128:
            raise ValueError("opus_pt must be a 7-bit payload type")
        # The history is the base's (media.lanes): an audio lane keeps frames in it from C.
        super().__init__(distance)
        self.distance = distance
        self.opus_pt = opus_pt
        self.max_payload = max_payload

    def encode(
        self, timestamp: int, payload: bytes | memoryview, distance: int | None = None
    ) -> bytes:
        """RED payload for the Opus ``payload`` sent with RTP ``timestamp``; ``distance``
        (at most the encoder's own) carries fewer previous frames, so one encoder's
        history serves a stream whose redundancy changes packet by packet."""
        timestamp &= 0xFFFFFFFF
        payload = bytes(payload)
        blocks: list[tuple[int, bytes | memoryview]] = []
        history = self._frames()
        if distance is not None and distance < len(history):
            history = history[len(history) - distance :] if distance > 0 else []
        for ts, data in history:
            offset = (timestamp - ts) & 0xFFFFFFFF
            if 0 < offset <= MAX_OFFSET and 0 < len(data) <= MAX_BLOCK:
                blocks.append((offset, data))
        while blocks and 1 + len(payload) + sum(4 + len(d) for _, d in blocks) > self.max_payload:
            blocks.pop(0)
        self._remember(timestamp, payload)
        return build_red(self.opus_pt, payload, blocks)

    def remember(self, timestamp: int, payload: bytes | memoryview) -> None:
        """Keep a frame as history without building a RED payload: the same state
        `encode` leaves, for a stream that goes out plain until redundancy is needed.
        A view of immutable bytes is kept as it is (every listener on a clean link calls
        this for every frame: no copy each)."""
        if type(payload) is memoryview and type(payload.obj) is bytes:
            self._remember(timestamp & 0xFFFFFFFF, payload)
        else:
            self._remember(timestamp & 0xFFFFFFFF, bytes(payload))

    def reset(self) -> None:
        """Forget history (new stream or after a timestamp discontinuity)."""
        self._forget()
