"""Ferry's audio decode path: jitter buffer -> Opus decode / FEC / PLC -> PCM.

This is the one component every internal audio consumer uses (captions, the
recorder's composite, any server-side listener). Feed it the RTP packets of one
Opus stream (one SSRC) as they arrive, call ``pull(now_ms)`` on the consumer's
clock (at ``next_deadline()``), and get one PCM frame per 20 ms slot, with
counters that say how much of it was real.

Usage (an asyncio shell keeps one timer on ``next_deadline()``)::

    path = AudioDecodePath(sample_rate=16000)          # captions want 16 kHz
    path.put(rtp.seq, rtp.timestamp, rtp.payload, now_ms)          # or put_red
    for pcm in path.pull(now_ms):                      # int16, 320 samples each
        vad.feed(pcm)

Use ``pull_frames`` when you need each frame's RTP timestamp and origin (the
recorder aligns tracks by timestamp). Sans-I/O: no clock, no threads; decoding
one 20 ms frame costs tens of microseconds, so a shell may call it inline or
batch it in an executor.

What each mode does with a slot whose packet is missing:

* ``"silence"``: zeros (the baseline that shows what concealment buys);
* ``"plc"``: Opus packet-loss concealment (extrapolates the last pitch period
  and fades out);
* ``"plc+fec"``: if the next packet is already buffered and carries in-band FEC
  (SILK LBRR), rebuild the frame from it; otherwise PLC.

RED (RFC 2198) input is handled by the jitter buffer in every mode: redundant
blocks fill holes *before* playout, so they decode like ordinary packets
(counted as ``frames_red_recovered``). A packet that fails to decode is
concealed and counted (``decode_errors``), never raised: this is the data plane.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from media.audio.jitter_buffer import AudioJitterBuffer, JitterStats, PlayoutSlot
from media.audio.opus_decoder import OpusDecoder, OpusError, packet_has_fec

Mode = Literal["silence", "plc", "plc+fec"]
MODES: tuple[Mode, ...] = ("silence", "plc", "plc+fec")
Source = Literal["decoded", "red", "fec", "plc", "silence"]


@dataclass(slots=True, frozen=True)
class DecodedFrame:
    """One frame of output: PCM plus where it came from.

    ``timestamp`` is the slot's extended RTP timestamp, or ``None`` for a
    stretch frame (inserted to grow the delay; it belongs to no timestamp).
    """

    pcm: np.ndarray
    timestamp: int | None
    source: Source


@dataclass(slots=True)
class DecodeStats:
    """Counters of what the consumer heard (frames are ``frame_ms`` long)."""

    frames_decoded: int = 0  # from the packet itself
    frames_fec_recovered: int = 0  # rebuilt from the next packet's in-band FEC
    frames_red_recovered: int = 0  # decoded from a RED redundant block
    frames_concealed: int = 0  # Opus PLC frames (stretch frames included)
    samples_concealed: int = 0  # PLC and silence samples, per channel
    silence_inserted: int = 0  # zero frames ("silence" mode)
    frames_stretched: int = 0  # frames inserted to grow the delay
    frames_discarded: int = 0  # decoded but dropped to shrink the delay
    decode_errors: int = 0  # packets libopus rejected (concealed instead)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class AudioDecodePath:
    """Jitter buffer + Opus decoder for one audio stream (see module docstring)."""

    def __init__(
        self,
        *,
        mode: Mode = "plc+fec",
        sample_rate: int = 48000,
        channels: int = 1,
        clock_rate: int = 48000,
        frame_ms: int = 20,
        min_delay_ms: float = 20.0,
        max_delay_ms: float = 400.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (allowed: {', '.join(MODES)})")
        self.mode: Mode = mode
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_samples = sample_rate * frame_ms // 1000
        self.jitter = AudioJitterBuffer(
            clock_rate=clock_rate,
            frame_ms=frame_ms,
            min_delay_ms=min_delay_ms,
            max_delay_ms=max_delay_ms,
        )
        self.decoder = OpusDecoder(sample_rate, channels)
        self.stats = DecodeStats()
        shape = (self.frame_samples,) if channels == 1 else (self.frame_samples, channels)
        self._silence = np.zeros(shape, dtype=np.int16)

    # ------------------------------------------------------------------ input
    def put(self, seq: int, timestamp: int, payload: bytes, arrival_ms: float) -> str | None:
        """One Opus RTP packet; returns the jitter buffer's drop reason or None."""
        return self.jitter.put(seq, timestamp, payload, arrival_ms)

    def put_red(
        self, seq: int, timestamp: int, red_payload: bytes, arrival_ms: float, opus_pt: int = 111
    ) -> str | None:
        """One RED (RFC 2198) packet carrying Opus as ``opus_pt``."""
        return self.jitter.put_red(seq, timestamp, red_payload, arrival_ms, opus_pt)

    # ----------------------------------------------------------------- output
    def next_deadline(self) -> float | None:
        """When the next frame is due (``None`` before the first packet)."""
        return self.jitter.next_deadline()

    def pull(self, now_ms: float) -> list[np.ndarray]:
        """PCM frames (int16) due at ``now_ms``, in playout order."""
        return [f.pcm for f in self.pull_frames(now_ms)]

    def pull_frames(self, now_ms: float) -> list[DecodedFrame]:
        """Like ``pull`` with each frame's timestamp and origin."""
        out: list[DecodedFrame] = []
        for slot in self.jitter.pop(now_ms):
            frame = self._render(slot)
            if frame is not None:
                out.append(frame)
        return out

    @property
    def jitter_stats(self) -> JitterStats:
        return self.jitter.stats

    def counters(self) -> dict[str, float]:
        """Decode and jitter-buffer counters in one flat dict (for metrics)."""
        out: dict[str, float] = dict(self.stats.to_dict())
        out.update({f"jb_{k}": v for k, v in self.jitter.stats.to_dict().items()})
        return out

    # -------------------------------------------------------------- internals
    def _render(self, slot: PlayoutSlot) -> DecodedFrame | None:
        stats = self.stats
        if slot.kind == "packet":
            assert slot.payload is not None
            try:
                pcm = self.decoder.decode(slot.payload)
            except (OpusError, ValueError):
                stats.decode_errors += 1
                if slot.discard:
                    return None
                return self._conceal(slot.timestamp)
            if slot.discard:
                stats.frames_discarded += 1
                return None
            if slot.from_red:
                stats.frames_red_recovered += 1
                return DecodedFrame(pcm, slot.timestamp, "red")
            stats.frames_decoded += 1
            return DecodedFrame(pcm, slot.timestamp, "decoded")
        if slot.kind == "stretch":
            stats.frames_stretched += 1
            return self._conceal(None)
        nxt = slot.next_payload
        if self.mode == "plc+fec" and nxt is not None and packet_has_fec(nxt):
            try:
                pcm = self.decoder.decode_fec(nxt, self.frame_samples)
            except OpusError:
                stats.decode_errors += 1
            else:
                stats.frames_fec_recovered += 1
                return DecodedFrame(pcm, slot.timestamp, "fec")
        return self._conceal(slot.timestamp)

    def _conceal(self, timestamp: int | None) -> DecodedFrame:
        stats = self.stats
        stats.samples_concealed += self.frame_samples
        if self.mode == "silence":
            stats.silence_inserted += 1
            return DecodedFrame(self._silence.copy(), timestamp, "silence")
        stats.frames_concealed += 1
        return DecodedFrame(self.decoder.conceal(self.frame_samples), timestamp, "plc")
