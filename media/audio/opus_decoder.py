"""A thin opuslib wrapper: decode, decode in-band FEC, conceal (PLC).

Why a wrapper: opuslib returns raw bytes, and its three ways of producing a
frame are spread over one overloaded call. The decode path wants three named
operations returning ``numpy.int16`` arrays, and a cheap way to know whether a
packet carries in-band FEC at all (libopus 1.3 in Debian has no
``opus_packet_has_lbrr``), so that "recovered by FEC" is counted only when FEC
data really existed: without it libopus silently falls back to PLC.

Facts checked against opuslib 3.0.1 / libopus 1.3.1:

* ``Decoder.decode(data, frame_size, decode_fec)`` wraps ``opus_decode``;
  ``frame_size`` is the *capacity* for normal decoding (we pass 120 ms, the
  largest Opus packet) but the *exact* duration to rebuild for FEC and PLC.
* PLC: ``opus_decode`` with ``len == 0`` runs packet-loss concealment, so
  ``decode(b"", n)`` works through opuslib (``len(b"") == 0``).
* opuslib's ``Encoder.inband_fec`` setter forgets its argument (a bug); use
  ``set_encoder_ctl(enc, "set_inband_fec", 1)`` below.

Output is 1-D for mono and ``(samples, channels)`` for more channels.

opuslib is imported through :mod:`media.audio.opus_loader` (the system libopus, else
the one in PyAV's wheel), so this module works with only what pip installs.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

import numpy as np

from media.audio.opus_loader import load_opuslib

if TYPE_CHECKING:
    from opuslib import Encoder

opuslib = load_opuslib()
OpusError: type[Exception] = opuslib.OpusError

MAX_PACKET_MS = 120

_lib = opuslib.api.libopus
_packet_parse = _lib.opus_packet_parse
_packet_parse.argtypes = [
    ctypes.c_char_p,
    ctypes.c_int32,
    ctypes.POINTER(ctypes.c_ubyte),
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_int16),
    ctypes.POINTER(ctypes.c_int),
]
_packet_parse.restype = ctypes.c_int


def packet_has_fec(payload: bytes) -> bool:
    """True when an Opus packet carries SILK LBRR (in-band FEC) for its first frame.

    Port of libwebrtc's ``WebRtcOpus_PacketHasFec``: CELT-only packets never do;
    otherwise the LBRR flag of each channel follows the per-frame VAD flags at
    the top of the first frame's range-coded data.
    """
    if len(payload) < 2 or payload[0] & 0x80:
        return False
    samples = _samples_per_frame(payload[0])
    frame_ms = max(10, samples // 48)
    frames = {10: 1, 20: 1, 40: 2, 60: 3}.get(frame_ms)
    if frames is None:
        return False
    channels = 2 if payload[0] & 0x04 else 1
    toc = ctypes.c_ubyte()
    ptrs = (ctypes.c_void_p * 48)()
    sizes = (ctypes.c_int16 * 48)()
    offset = ctypes.c_int()
    if _packet_parse(payload, len(payload), ctypes.byref(toc), ptrs, sizes, ctypes.byref(offset)) < 0:
        return False
    if sizes[0] <= 1:
        return False
    first = payload[offset.value]
    return any(first & (0x80 >> ((n + 1) * (frames + 1) - 1)) for n in range(channels))


def _samples_per_frame(toc: int, fs: int = 48000) -> int:
    """RFC 6716 section 3.1: frame duration from the TOC configuration."""
    config = toc >> 3
    if toc & 0x80:  # CELT-only
        return (fs << ((toc >> 3) & 0x3)) // 400
    if (toc & 0x60) == 0x60:  # hybrid
        return fs // 50 if toc & 0x08 else fs // 100
    size = config & 0x3
    return fs * 60 // 1000 if size == 3 else (fs << size) // 100


def set_encoder_ctl(encoder: Encoder, name: str, value: int) -> None:
    """Set an encoder CTL by name (works around opuslib's broken setters)."""
    request: Any = getattr(opuslib.api.ctl, name)
    opuslib.api.encoder.encoder_ctl(encoder.encoder_state, request, value)


class OpusDecoder:
    """One Opus decoder state (one per stream: PLC and FEC depend on history)."""

    def __init__(self, sample_rate: int = 48000, channels: int = 1) -> None:
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"Opus cannot decode at {sample_rate} Hz")
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        self.sample_rate = sample_rate
        self.channels = channels
        self._dec = opuslib.Decoder(sample_rate, channels)
        self._max_samples = sample_rate * MAX_PACKET_MS // 1000

    def _array(self, pcm: bytes) -> np.ndarray:
        out = np.frombuffer(pcm, dtype=np.int16).copy()
        return out if self.channels == 1 else out.reshape(-1, self.channels)

    def decode(self, payload: bytes) -> np.ndarray:
        """Decode one packet (any Opus duration). Raises ``OpusError``."""
        if not payload:
            raise ValueError("empty Opus payload (use conceal for a lost frame)")
        return self._array(self._dec.decode(bytes(payload), self._max_samples))

    def decode_fec(self, next_payload: bytes, frame_samples: int) -> np.ndarray:
        """Rebuild the frame *before* ``next_payload`` from its in-band FEC.

        ``frame_samples`` (at the decoder's rate) is the missing duration. When
        the packet has no FEC data libopus conceals instead (see
        ``packet_has_fec``). Do not decode ``next_payload`` normally before this.
        """
        return self._array(self._dec.decode(bytes(next_payload), frame_samples, True))

    def conceal(self, frame_samples: int) -> np.ndarray:
        """Opus packet-loss concealment for ``frame_samples`` samples."""
        return self._array(self._dec.decode(b"", frame_samples))

    def reset(self) -> None:
        """Forget history (after a stream discontinuity)."""
        self._dec.reset_state()
