"""Negotiated media parameters, independent of SDP text.

`signaling.sdp` turns SDP into these objects and back; `media/` only ever sees these,
like mediasoup's `ortc.ts`. Keeping them plain dataclasses makes the engine testable
without writing SDP by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["audio", "video"]
Direction = Literal["sendonly", "recvonly", "sendrecv", "inactive"]

# Header extension URIs Ferry understands.
EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


@dataclass(slots=True)
class RtpCodec:
    """One negotiated codec (a payload type), with its RTX payload type if any."""

    payload_type: int
    name: str  # as in a=rtpmap: "opus", "VP8", "H264", "red"
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)  # a=fmtp key/values
    rtcp_feedback: list[tuple[str, str | None]] = field(default_factory=list)
    rtx_payload_type: int | None = None
    # The m-line kind this codec came from. Optional because callers building codecs by
    # hand rarely need it, but "red" exists for both audio and video, so `mime` cannot
    # always guess the kind from the name alone.
    kind: str | None = None

    @property
    def mime(self) -> str:
        if self.kind is not None:
            return f"{self.kind}/{self.name}"
        kind = "audio" if self.channels is not None or self.name.lower() in ("opus", "red") else "video"
        return f"{kind}/{self.name}"

    def has_feedback(self, type_: str, param: str | None = None) -> bool:
        return (type_, param) in self.rtcp_feedback


@dataclass(slots=True)
class HeaderExtension:
    id: int
    uri: str


@dataclass(slots=True)
class Encoding:
    """One RTP stream of a media section: a simulcast rid and/or known SSRCs."""

    rid: str | None = None
    ssrc: int | None = None
    rtx_ssrc: int | None = None
    paused: bool = False  # "~rid" in a=simulcast: negotiated but not sent until resumed


@dataclass(slots=True)
class MediaDescription:
    """One m-line. `direction` is as written in the SDP it came from."""

    mid: str
    kind: Kind | str
    direction: Direction = "sendrecv"
    codecs: list[RtpCodec] = field(default_factory=list)
    header_extensions: list[HeaderExtension] = field(default_factory=list)
    encodings: list[Encoding] = field(default_factory=list)
    msid: tuple[str, str] | None = None  # (stream id, track id)
    cname: str | None = None
    rejected: bool = False  # port 0, or a kind Ferry does not handle
    simulcast: bool = False  # a=simulcast present (rids in encodings)
    # m-line details needed to echo an m-line we reject (e.g. a data channel section) and
    # to mirror what the peer asked for; defaults suit sections Ferry builds itself.
    protocol: str = "UDP/TLS/RTP/SAVPF"
    formats: list[str] = field(default_factory=list)  # raw fmt tokens of the m-line
    rtcp_mux: bool = False
    rtcp_rsize: bool = False

    def extension_id(self, uri: str) -> int | None:
        for ext in self.header_extensions:
            if ext.uri == uri:
                return ext.id
        return None


@dataclass(slots=True)
class TransportParameters:
    """ICE and DTLS parameters of one (BUNDLEd) transport."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]] = field(default_factory=list)  # (algorithm, "AB:CD:..")
    setup: Literal["actpass", "active", "passive"] = "actpass"
    ice_lite: bool = False
    candidates: list[str] = field(default_factory=list)  # candidate-attribute values


@dataclass(slots=True)
class SessionDescription:
    type: Literal["offer", "answer"]
    transport: TransportParameters
    media: list[MediaDescription] = field(default_factory=list)
    bundle: list[str] = field(default_factory=list)  # mids of a=group:BUNDLE, tag first
    extmap_allow_mixed: bool = False  # peer accepts one- and two-byte header extensions
