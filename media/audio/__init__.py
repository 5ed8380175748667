"""Ferry: media/audio - the decode path for internal audio consumers.

``AudioDecodePath`` (jitter buffer + Opus decode, FEC and PLC) is what captions,
the recorder's composite and server-side listeners use; ``RedEncoder`` adds RFC
2198 redundancy toward lossy subscribers. Never used in the forward path.
"""

from media.audio.decode_path import AudioDecodePath, DecodedFrame, DecodeStats
from media.audio.jitter_buffer import AudioJitterBuffer, JitterStats, PlayoutSlot
from media.audio.opus_decoder import OpusDecoder, packet_has_fec
from media.audio.red_encoder import RedEncoder

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
