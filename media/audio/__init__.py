"""Ferry: media/audio - the decode path for internal audio consumers.

``AudioDecodePath`` (jitter buffer + Opus decode, FEC and PLC) is what captions,
the recorder's composite and server-side listeners use; ``RedEncoder`` adds RFC
2198 redundancy toward lossy subscribers. Never used in the forward path.

Names are imported on first use (PEP 562): the forward path imports
``media.audio.red_encoder``, and that must not load libopus, which only the decoder
needs (see ``media.audio.opus_loader``).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "AudioDecodePath": "decode_path",
    "DecodeStats": "decode_path",
    "DecodedFrame": "decode_path",
    "AudioJitterBuffer": "jitter_buffer",
    "JitterStats": "jitter_buffer",
    "PlayoutSlot": "jitter_buffer",
    "OpusDecoder": "opus_decoder",
    "packet_has_fec": "opus_decoder",
    "RedEncoder": "red_encoder",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'media.audio' has no attribute {name!r}")
    return getattr(importlib.import_module(f"media.audio.{home}"), name)


__all__ = [
    "AudioDecodePath",
    "AudioJitterBuffer",
    "DecodeStats",
    "DecodedFrame",
    "JitterStats",
    "OpusDecoder",
    "PlayoutSlot",
    "RedEncoder",
    "packet_has_fec",
]
