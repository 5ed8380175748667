"""Offer/answer: what each side accepts, and the answer text it writes.

- `answer_publisher(offer, transport=...)`: Ferry answers a client's publisher offer.
- `negotiated_subscriber(offer_sections, answer)`: what a client accepted of Ferry's
  subscriber offer.
- `build_subscriber_answer(offer, ...)`: a client answers Ferry's subscriber offer.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Iterable, Sequence

from media.ortc import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
    HeaderExtension,
    MediaDescription,
    RtpCodec,
    SessionDescription,
    TransportParameters,
)

from .build import (
    join,
    media_lines,
    payload_types,
    rejected_lines,
    session_lines,
    transport_lines,
)
from .parse import SdpError

__all__ = [
    "DEFAULT_EXTENSIONS",
    "answer_publisher",
    "build_subscriber_answer",
    "negotiated_subscriber",
]

#: Header extensions Ferry accepts from publishers: demux (mid, rid, repaired-rid),
#: speaker detection (audio-level) and bandwidth estimation (abs-send-time, twcc).
DEFAULT_EXTENSIONS: frozenset[str] = frozenset(
    {EXT_MID, EXT_RID, EXT_REPAIRED_RID, EXT_AUDIO_LEVEL, EXT_ABS_SEND_TIME, EXT_TWCC}
)

#: RTCP feedback Ferry implements for video it receives (it generates these messages).
_VIDEO_FEEDBACK: frozenset[tuple[str, str | None]] = frozenset(
    {("nack", None), ("nack", "pli"), ("ccm", "fir"), ("goog-remb", None), ("transport-cc", None)}
)
_AUDIO_FEEDBACK: frozenset[tuple[str, str | None]] = frozenset(
    {("transport-cc", None), ("nack", None)}
)


def answer_publisher(
    offer: SessionDescription,
    *,
    transport: TransportParameters,
    audio_codecs: Sequence[str] = ("opus", "red"),
    video_codecs: Sequence[str] = ("VP8", "H264"),
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    start_bitrate_kbps: int | None = None,
    min_bitrate_kbps: int | None = None,
    accept_red: bool = True,
    session_id: int | None = None,
) -> tuple[str, SessionDescription]:
    """Answer a client's publisher offer.

    Returns the answer text and the negotiated description of what Ferry will *receive*
    (directions as written in the answer, i.e. recvonly). Codecs: one primary per m-line,
    the client's most preferred among `audio_codecs` / `video_codecs`, so every layer of
    a simulcast track arrives in one codec that all subscribers can be offered; plus its
    RTX, and audio RED when offered (kept in the client's order). `start_bitrate_kbps`
    adds Chrome's x-google-start/min-bitrate so all simulcast layers start at once
    (DESIGN §8); the minimum defaults to 80% of the start.
    """
    if offer.type != "offer":
        raise SdpError("answer_publisher needs an offer")
    if offer.transport.setup == "passive":
        raise SdpError("offer demands setup:passive, but Ferry is always the DTLS server")
    allowed_ext = frozenset(extensions)
    answer_transport = dataclasses.replace(
        transport,
        setup="passive",
        ice_lite=True,
        fingerprints=list(transport.fingerprints),
        candidates=list(transport.candidates),
    )
    bitrate: dict[str, str] = {}
    if start_bitrate_kbps is not None:
        low = min_bitrate_kbps if min_bitrate_kbps is not None else start_bitrate_kbps * 4 // 5
        bitrate = {
            "x-google-start-bitrate": str(start_bitrate_kbps),
            "x-google-min-bitrate": str(low),
        }

    bundled = set(offer.bundle)
    answered: list[MediaDescription] = []
    for md in offer.media:
        result = None
        if not md.rejected and md.rtcp_mux and (not offer.bundle or md.mid in bundled):
            if md.kind == "audio":
                result = _answer_audio(md, audio_codecs, accept_red, allowed_ext)
            elif md.kind == "video":
                result = _answer_video(md, video_codecs, allowed_ext, bitrate)
        answered.append(result or _rejected_copy(md))

    accepted = [m.mid for m in answered if not m.rejected]
    if len(accepted) > 1 and not offer.bundle:
        raise SdpError("offer does not BUNDLE its media; Ferry needs a single transport")
    # The answerer's BUNDLE tag must be the offerer's tag when that section is accepted.
    bundle = [m for m in offer.bundle if m in accepted] + [m for m in accepted if m not in bundled]
    allow_mixed = offer.extmap_allow_mixed and any(
        e.id > 14 for m in answered for e in m.header_extensions
    )
    negotiated = SessionDescription(
        type="answer",
        transport=answer_transport,
        media=answered,
        bundle=bundle,
        extmap_allow_mixed=allow_mixed,
    )
    sid = session_id if session_id is not None else random.getrandbits(62)
    lines = session_lines(sid, 2, bundle, allow_mixed, ice_lite=True)
    for m in answered:
        if m.rejected:
            lines += rejected_lines(m)
        else:
            lines += media_lines(m, answer_transport, "passive", rtcp_rsize=m.rtcp_rsize)
    return join(lines), negotiated


def _rejected_copy(md: MediaDescription) -> MediaDescription:
    return MediaDescription(
        mid=md.mid,
        kind=md.kind,
        direction="inactive",
        rejected=True,
        protocol=md.protocol,
        formats=list(md.formats[:1]) or ["0"],
    )


def _answer_direction(offered: str) -> str:
    # Ferry only receives on the publisher PC; a client that wants to receive there
    # (recvonly) gets nothing, which is "inactive".
    return "recvonly" if offered in ("sendonly", "sendrecv") else "inactive"


def _base_answer(
    md: MediaDescription, codecs: list[RtpCodec], allowed_ext: frozenset[str]
) -> MediaDescription:
    exts = [copy.copy(e) for e in md.header_extensions if e.uri in allowed_ext]
    if not any(e.uri == EXT_TWCC for e in exts):  # twcc feedback needs its extension
        for codec in codecs:
            codec.rtcp_feedback = [fb for fb in codec.rtcp_feedback if fb[0] != "transport-cc"]
    return MediaDescription(
        mid=md.mid,
        kind=md.kind,
        direction=_answer_direction(md.direction),  # type: ignore[arg-type]
        codecs=codecs,
        header_extensions=exts,
        encodings=[copy.copy(e) for e in md.encodings],
        msid=md.msid,
        cname=md.cname,
        simulcast=md.simulcast,
        protocol=md.protocol,
        formats=[str(pt) for pt in payload_types(codecs)],
        rtcp_mux=True,
        rtcp_rsize=md.rtcp_rsize,
    )


def _answer_audio(
    md: MediaDescription, names: Sequence[str], accept_red: bool, allowed_ext: frozenset[str]
) -> MediaDescription | None:
    wanted = {n.lower() for n in names}
    primary = next(
        (c for c in md.codecs if c.name.lower() in wanted and c.name.lower() != "red"), None
    )
    if primary is None:
        return None
    chosen: list[RtpCodec] = []
    for codec in md.codecs:
        if codec is primary:
            chosen.append(_restrict(codec, _AUDIO_FEEDBACK))
        elif (
            codec.name.lower() == "red"
            and accept_red
            and "red" in wanted
            and _red_protects(codec, primary.payload_type)
        ):
            chosen.append(_restrict(codec, _AUDIO_FEEDBACK))
    return _base_answer(md, chosen, allowed_ext)


def _red_protects(red: RtpCodec, pt: int) -> bool:
    """RED's fmtp ("111/111") must name only the primary, or Ferry could not unwrap it."""
    blocks = [k for k in red.parameters if "/" in k or k.isdigit()]
    return bool(blocks) and all(b == str(pt) for k in blocks for b in k.split("/"))


def _answer_video(
    md: MediaDescription, names: Sequence[str], allowed_ext: frozenset[str], bitrate: dict[str, str]
) -> MediaDescription | None:
    wanted = {n.lower() for n in names}
    candidates = [c for c in md.codecs if c.name.lower() in wanted]
    if not candidates:
        return None
    # Client order decides; among H.264 variants skip packetization-mode=0 (single NAL
    # units only) when the client also offers mode 1, since Ferry forwards FU-A freely.
    good = [
        c
        for c in candidates
        if c.name.upper() != "H264" or c.parameters.get("packetization-mode") == "1"
    ]
    chosen = _restrict((good or candidates)[0], _VIDEO_FEEDBACK)
    chosen.parameters.update(bitrate)
    return _base_answer(md, [chosen], allowed_ext)


def _restrict(codec: RtpCodec, feedback: frozenset[tuple[str, str | None]]) -> RtpCodec:
    out = copy.deepcopy(codec)
    out.rtcp_feedback = [fb for fb in codec.rtcp_feedback if fb in feedback]
    return out




# --------------------------------------------------------------------------- subscriber


def negotiated_subscriber(
    offer_sections: list[MediaDescription], answer: SessionDescription
) -> list[MediaDescription]:
    """What the client accepted of Ferry's subscriber offer, per offered section.

    Directions are Ferry's side ("sendonly" or "inactive"). Payload types follow the
    answer: for a recvonly answerer they are what it expects to receive (RFC 3264 §6.1).
    A codec's RTX and feedback survive only if the answer kept them, so Ferry knows e.g.
    whether to send RED, retransmit with RTX, or expect transport-cc feedback.
    """
    answered = {m.mid: m for m in answer.media}
    out: list[MediaDescription] = []
    for offered in offer_sections:
        got = answered.get(offered.mid)
        result = copy.deepcopy(offered)
        if offered.rejected or got is None or got.rejected or got.kind != offered.kind:
            result.rejected = True
            result.direction = "inactive"
            result.codecs, result.header_extensions = [], []
            out.append(result)
            continue
        result.codecs = [c for c in (_match_codec(o, got.codecs) for o in offered.codecs) if c]
        uris = {e.uri: e.id for e in got.header_extensions}
        result.header_extensions = [
            HeaderExtension(uris[e.uri], e.uri) for e in offered.header_extensions if e.uri in uris
        ]
        receives = got.direction in ("recvonly", "sendrecv")
        result.direction = (
            "sendonly" if receives and offered.direction in ("sendonly", "sendrecv") else "inactive"
        )
        result.rtcp_rsize = offered.rtcp_rsize and got.rtcp_rsize
        result.rtcp_mux = got.rtcp_mux
        if not result.codecs:
            result.rejected, result.direction = True, "inactive"
        out.append(result)
    return out


def _match_codec(offered: RtpCodec, answered: list[RtpCodec]) -> RtpCodec | None:
    def same(a: RtpCodec, b: RtpCodec) -> bool:
        if a.name.lower() != b.name.lower() or a.clock_rate != b.clock_rate:
            return False
        if a.name.upper() == "H264":
            keys = ("packetization-mode", "profile-level-id")
            return all(
                a.parameters.get(k, "").lower() == b.parameters.get(k, "").lower() for k in keys
            )
        return True

    match = next(
        (a for a in answered if a.payload_type == offered.payload_type and same(offered, a)), None
    )
    match = match or next((a for a in answered if same(offered, a)), None)
    if match is None:
        return None
    result = copy.deepcopy(offered)
    result.payload_type = match.payload_type
    result.rtx_payload_type = (
        match.rtx_payload_type if offered.rtx_payload_type is not None else None
    )
    result.rtcp_feedback = [fb for fb in offered.rtcp_feedback if fb in match.rtcp_feedback]
    return result


# --------------------------------------------------------------------------- client side

#: What a client accepts of Ferry's subscriber offer.
_CLIENT_CODECS = frozenset({"opus", "vp8", "red"})
_CLIENT_EXTENSIONS = frozenset({EXT_MID, EXT_TWCC, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL})
_CLIENT_FEEDBACK = frozenset({("nack", None), ("nack", "pli"), ("ccm", "fir")})


def build_subscriber_answer(
    offer: SessionDescription,
    *,
    ufrag: str,
    pwd: str,
    fingerprint: tuple[str, str],
    twcc: bool = True,
    session_id: int | None = None,
) -> str:
    """A client's answer to Ferry's subscriber offer: recvonly for what it sends, setup:active.

    Accepts opus, VP8, their RTX and RED as offered, with transport-cc (if ``twcc``),
    nack, nack pli and ccm fir feedback; other codecs are dropped and a section left
    without codecs is rejected (port 0), as a browser would. No candidates: Ferry, being
    ICE-lite, learns the client's address from its connectivity checks.
    """
    transport = TransportParameters(
        ice_ufrag=ufrag, ice_pwd=pwd, fingerprints=[fingerprint], setup="active"
    )
    feedback = _CLIENT_FEEDBACK | {("transport-cc", None)} if twcc else _CLIENT_FEEDBACK
    extensions = _CLIENT_EXTENSIONS if twcc else _CLIENT_EXTENSIONS - {EXT_TWCC}
    answered: list[MediaDescription] = []
    for md in offer.media:
        result = None
        if not md.rejected and md.kind in ("audio", "video"):
            codecs = [_restrict(c, feedback) for c in md.codecs if c.name.lower() in _CLIENT_CODECS]
            if codecs:
                result = _base_answer(md, codecs, extensions)
                result.simulcast = False  # Ferry offers one stream per m-line
        answered.append(result or _rejected_copy(md))
    sid = session_id if session_id is not None else random.getrandbits(62)
    accepted = [m.mid for m in answered if not m.rejected]
    # The transport at session level too: an answer that rejects every section still
    # names the client's ICE credentials and certificate.
    lines = session_lines(sid, 2, accepted, False, ice_lite=False)
    lines += transport_lines(transport, "active")
    for m in answered:
        if m.rejected:
            lines += rejected_lines(m)
        else:
            lines += media_lines(m, transport, "active", rtcp_rsize=m.rtcp_rsize)
    return join(lines)
