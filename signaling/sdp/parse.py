"""SDP text -> `media.ortc` objects: `parse`, plus the lenient readers clients use.

Why Ferry parses SDP itself instead of using `aiortc.sdp`: aiortc drops a=rid and
a=simulcast, and Ferry's whole point is receiving simulcast (DESIGN §2).

- `parse(text, type)`: any offer/answer text -> `SessionDescription`; raises only `SdpError`.
- `parse_media_sections(text)`: mid, kind, port, direction and msid of every m-line,
  without requiring a usable transport (what a client needs to map tracks to m-lines).
- `candidate_address(candidate)`: (transport, host, port) of one ICE candidate;
  `first_udp_candidate(candidates)`: the first UDP one's (host, port).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from media.ortc import (
    Encoding,
    MediaDescription,
    RtpCodec,
    SessionDescription,
    TransportParameters,
)

from .lines import SdpError, Section, Session, msid, scan

__all__ = [
    "MediaSection",
    "SdpError",
    "candidate_address",
    "first_udp_candidate",
    "parse",
    "parse_media_sections",
]

# RFC 3551 static payload types a peer may list without an a=rtpmap line.
_STATIC_PT: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
}


def parse(text: str, type: Literal["offer", "answer"]) -> SessionDescription:
    """Parse an SDP offer or answer.

    Raises `SdpError` (and nothing else) for any text that is not usable SDP, so the
    signaling layer can turn it into a `bad_request` without a catch-all.
    """
    if type not in ("offer", "answer"):
        raise SdpError(f"unknown description type {type!r}")
    session, sections = scan(text)
    return _build(type, session, sections)


def _simulcast_encodings(s: Section) -> list[Encoding]:
    """Encodings from a=simulcast, in its order.

    The send list wins when the author sends (a publisher offer); otherwise the recv list
    (an answer accepting simulcast). Of alternatives ("q,h") only the first rid declared by
    a=rid is kept: Ferry's answer then offers just that one, which RFC 8853 allows. "~"
    marks a paused stream; rids not declared by a=rid are ignored as RFC 8853 requires.
    """
    sends = s.direction in (None, "sendonly", "sendrecv")
    order = ("send", "recv") if sends else ("recv", "send")
    for direction in order:
        if direction not in s.simulcast:
            continue
        encodings: list[Encoding] = []
        seen: set[str] = set()
        for stream in s.simulcast[direction].split(";"):
            for alt in stream.split(","):
                paused = alt.startswith("~")
                rid = alt[1:] if paused else alt
                if rid and s.rids.get(rid) == direction and rid not in seen:
                    seen.add(rid)
                    encodings.append(Encoding(rid=rid, paused=paused))
                    break
        return encodings
    return []


def _ssrc_encodings(s: Section) -> list[Encoding]:
    """Encodings from a=ssrc / a=ssrc-group: FID pairs a primary with its RTX SSRC."""
    rtx_of: dict[int, int] = {}
    secondary: set[int] = set()
    sim: list[int] | None = None
    for semantics, ssrcs in s.ssrc_groups:
        if semantics == "FID" and len(ssrcs) == 2:
            rtx_of.setdefault(ssrcs[0], ssrcs[1])
            secondary.add(ssrcs[1])
        elif semantics in ("FEC-FR", "FEC") and len(ssrcs) == 2:
            secondary.add(ssrcs[1])
        elif semantics == "SIM" and sim is None:
            sim = ssrcs
    primaries = sim if sim is not None else [x for x in s.ssrc_order if x not in secondary]
    return [Encoding(ssrc=x, rtx_ssrc=rtx_of.get(x)) for x in dict.fromkeys(primaries)]


def _codecs(s: Section) -> list[RtpCodec]:
    """Codecs in m-line (preference) order; RTX folds into its primary via apt=."""
    codecs: dict[int, RtpCodec] = {}
    rtx: list[tuple[int, dict[str, str]]] = []
    for fmt in s.formats:
        pt = int(fmt)
        if pt in codecs:
            continue
        desc = s.rtpmap.get(pt) or (_STATIC_PT.get(pt) if s.kind == "audio" else None)
        if desc is None:
            continue  # a dynamic pt without rtpmap means nothing; browsers ignore it too
        name, clock, channels = desc
        params = dict(s.fmtp.get(pt, {}))
        if name.lower() == "rtx":
            rtx.append((pt, params))
            continue
        codecs[pt] = RtpCodec(
            payload_type=pt,
            name=name,
            clock_rate=clock,
            channels=channels,
            parameters=params,
            kind=s.kind,
        )
    for pt, params in rtx:
        apt = params.get("apt", "")
        if apt.isascii() and apt.isdigit() and int(apt) in codecs:
            primary = codecs[int(apt)]
            if primary.rtx_payload_type is None:
                primary.rtx_payload_type = pt
    for target, fb_type, fb_param in s.feedback:
        for codec in codecs.values():
            if target in ("*", str(codec.payload_type)):
                if (fb_type, fb_param) not in codec.rtcp_feedback:
                    codec.rtcp_feedback.append((fb_type, fb_param))
    return list(codecs.values())


def _build(
    type: Literal["offer", "answer"], sess: Session, sections: list[Section]
) -> SessionDescription:
    media: list[MediaDescription] = []
    mids: set[str] = set()
    for index, s in enumerate(sections):
        rejected = not s.is_rtp or (s.port == 0 and not s.bundle_only)
        mid = s.mid if s.mid is not None else str(index)
        if mid in mids:
            raise SdpError(f"line {s.lineno}: duplicate mid {mid!r}")
        mids.add(mid)
        md = MediaDescription(
            mid=mid,
            kind=s.kind,
            rejected=rejected,
            protocol=s.protocol,
            formats=list(s.formats),
            rtcp_mux=s.rtcp_mux,
            rtcp_rsize=s.rtcp_rsize,
        )
        media.append(md)
        if not s.is_rtp:
            continue
        md.direction = s.direction or "sendrecv"  # type: ignore[assignment]
        md.codecs = _codecs(s)
        md.header_extensions = s.extensions or [copy.copy(e) for e in sess.extensions]
        md.msid = s.msid
        cnames = [a["cname"] for a in s.ssrc_attrs.values() if a.get("cname")]
        md.cname = cnames[0] if cnames else None
        if md.msid is None:
            legacy = [a["msid"] for a in s.ssrc_attrs.values() if a.get("msid")]
            md.msid = msid(legacy[0]) if legacy else None
        encodings = _simulcast_encodings(s)
        md.simulcast = bool(encodings)
        md.encodings = encodings or _ssrc_encodings(s)

    transport = _transport(type, sess, sections, media)
    bundle = [mid for mid in sess.bundle if mid in mids]
    return SessionDescription(
        type=type,
        transport=transport,
        media=media,
        bundle=bundle,
        extmap_allow_mixed=sess.extmap_allow_mixed,
    )


def _transport(
    type: str, sess: Session, sections: list[Section], media: list[MediaDescription]
) -> TransportParameters:
    """The single transport: the BUNDLE tag's parameters, session-level as fallback."""
    live = [s for s, md in zip(sections, media, strict=True) if not md.rejected]
    by_mid = {md.mid: s for s, md in zip(sections, media, strict=True) if not md.rejected}
    tag = next((by_mid[m] for m in sess.bundle if m in by_mid), live[0] if live else None)
    ufrag = (tag.ice_ufrag if tag else None) or sess.ice_ufrag
    pwd = (tag.ice_pwd if tag else None) or sess.ice_pwd
    fingerprints = (tag.fingerprints if tag else None) or sess.fingerprints
    setup = (tag.setup if tag else None) or sess.setup
    if live:
        if not ufrag or not pwd:
            raise SdpError(f"{type} has media but no a=ice-ufrag/a=ice-pwd")
        if not fingerprints:
            raise SdpError(f"{type} has media but no a=fingerprint")
    candidates: list[str] = []
    for s in live:
        candidates.extend(c for c in s.candidates if c not in candidates)
    if setup is None:  # RFC 4145: absent means active; an offerer is flexible per JSEP
        setup = "actpass" if type == "offer" else "active"
    return TransportParameters(
        ice_ufrag=ufrag or "",
        ice_pwd=pwd or "",
        fingerprints=list(fingerprints),
        setup=setup,  # type: ignore[arg-type]
        ice_lite=sess.ice_lite,
        candidates=candidates,
    )


@dataclass
class MediaSection:
    """What a client needs from one m-line of a subscriber offer."""

    mid: str | None
    kind: str
    port: int
    direction: str
    msid: tuple[str, str] | None  # (participant_sid, track_sid) in Ferry's offers


def parse_media_sections(text: str) -> list[MediaSection]:
    """Mid, kind, port, direction and ``a=msid`` of every m-line; raises `SdpError`.

    Lines are checked as `parse` checks them, but no transport is required: the mid is
    what links an m-line to the transceiver a WebRTC stack creates for it.
    """
    _, sections = scan(text)
    return [
        MediaSection(
            s.mid,
            s.kind,
            s.port,
            s.direction or "sendrecv",
            s.msid if s.msid is not None and s.msid[1] else None,
        )
        for s in sections
    ]


def candidate_value(candidate: str) -> str:
    """A candidate attribute's value without ``a=`` / ``candidate:`` prefixes."""
    value = candidate.strip()
    for prefix in ("a=", "candidate:"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    return value


def candidate_address(candidate: str) -> tuple[str, str, int] | None:
    """(transport, host, port) of one candidate (RFC 8839 §5.1), or None if malformed."""
    parts = candidate_value(candidate).split()
    if len(parts) >= 6 and parts[5].isdigit():
        return parts[2].lower(), parts[4], int(parts[5])
    return None


def first_udp_candidate(candidates: Sequence[str]) -> tuple[str, int] | None:
    """(host, port) of the first UDP candidate, or None."""
    for cand in candidates:
        addr = candidate_address(cand)
        if addr is not None and addr[0] == "udp":
            return addr[1], addr[2]
    return None
