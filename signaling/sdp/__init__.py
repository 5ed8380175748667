"""SDP <-> `media.ortc` objects, for the server and the Python clients alike.

Ferry, as seen from SDP: ICE-lite, one BUNDLEd transport, rtcp-mux only, and always the
DTLS server (`a=setup:passive` in answers, `actpass` in its own offers; browsers answer
an actpass offer with `active`). Everything SDP lives here, so the media engine only
ever sees `media.ortc` dataclasses.

- `parse` (reading, on `lines`' line scanner): `parse(text, type)`,
  `parse_media_sections`, `first_udp_candidate`.
- `build` (writing): Ferry's `offer_subscriber` with `default_subscriber_codecs` /
  `default_subscriber_extensions`; a client's `build_publisher_offer`.
- `negotiate` (offer/answer): Ferry's `answer_publisher` and `negotiated_subscriber`;
  a client's `build_subscriber_answer`.
"""

from media.ortc import (
    Encoding,
    HeaderExtension,
    MediaDescription,
    RtpCodec,
    SessionDescription,
    TransportParameters,
)

from .build import (
    PT_OPUS,
    PT_RTX,
    PT_VP8,
    PUBLISHER_EXTENSION_IDS,
    build_publisher_offer,
    default_subscriber_codecs,
    default_subscriber_extensions,
    offer_subscriber,
)
from .negotiate import (
    DEFAULT_EXTENSIONS,
    answer_publisher,
    build_subscriber_answer,
    negotiated_subscriber,
)
from .parse import (
    MediaSection,
    SdpError,
    candidate_address,
    first_udp_candidate,
    parse,
    parse_media_sections,
)

__all__ = [
    "DEFAULT_EXTENSIONS",
    "PT_OPUS",
    "PT_RTX",
    "PT_VP8",
    "PUBLISHER_EXTENSION_IDS",
    "Encoding",
    "HeaderExtension",
    "MediaDescription",
    "MediaSection",
    "RtpCodec",
    "SdpError",
    "SessionDescription",
    "TransportParameters",
    "answer_publisher",
    "build_publisher_offer",
    "build_subscriber_answer",
    "candidate_address",
    "default_subscriber_codecs",
    "default_subscriber_extensions",
    "first_udp_candidate",
    "negotiated_subscriber",
    "offer_subscriber",
    "parse",
    "parse_media_sections",
]
