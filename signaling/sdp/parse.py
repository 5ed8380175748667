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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from media.ortc import (
    Encoding,
    HeaderExtension,
    MediaDescription,
    RtpCodec,
    SessionDescription,
    TransportParameters,
)

__all__ = [
    "MediaSection",
    "SdpError",
    "candidate_address",
    "first_udp_candidate",
    "parse",
    "parse_media_sections",
]


class SdpError(ValueError):
    """Malformed or unacceptable SDP. Signaling maps it to a `bad_request` error."""


# RFC 3551 static payload types a peer may list without an a=rtpmap line.
_STATIC_PT: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
}

_DIRECTIONS = ("sendonly", "recvonly", "sendrecv", "inactive")
_SETUPS = ("actpass", "active", "passive")
_LINE = re.compile(r"^([a-z])=(.*)$")


# --------------------------------------------------------------------------- parsing


def _int(value: str, what: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    """Strict decimal integer: SDP numbers never carry signs, spaces or underscores."""
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise SdpError(f"{what}: expected a number, got {value!r}")
    n = int(value)
    if not lo <= n <= hi:
        raise SdpError(f"{what}: {n} out of range {lo}..{hi}")
    return n


def _pt(value: str, what: str) -> int:
    return _int(value, what, 0, 127)


def _split_fmtp(value: str) -> dict[str, str]:
    """fmtp parameters; bare tokens (RED's "111/111") become keys with an empty value."""
    params: dict[str, str] = {}
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, val = part.partition("=")
        params[key.strip()] = val.strip()
    return params




@dataclass
class _Section:
    """Raw per-m-line state collected while scanning; turned into a MediaDescription."""

    kind: str
    port: int
    protocol: str
    formats: list[str]
    lineno: int
    mid: str | None = None
    direction: str | None = None
    rtpmap: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    fmtp: dict[int, dict[str, str]] = field(default_factory=dict)
    feedback: list[tuple[str, str, str | None]] = field(default_factory=list)
    extensions: list[HeaderExtension] = field(default_factory=list)
    msid: tuple[str, str] | None = None
    ssrc_attrs: dict[int, dict[str, str]] = field(default_factory=dict)
    ssrc_order: list[int] = field(default_factory=list)
    ssrc_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    rids: dict[str, str] = field(default_factory=dict)  # rid -> "send" | "recv"
    simulcast: dict[str, str] = field(default_factory=dict)  # "send"/"recv" -> list text
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    candidates: list[str] = field(default_factory=list)
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    bundle_only: bool = False

    @property
    def is_rtp(self) -> bool:
        return self.kind in ("audio", "video") and "RTP" in self.protocol.split("/")

    def note_ssrc(self, ssrc: int) -> None:
        if ssrc not in self.ssrc_attrs:
            self.ssrc_attrs[ssrc] = {}
            self.ssrc_order.append(ssrc)


@dataclass
class _Session:
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    ice_lite: bool = False
    bundle: list[str] = field(default_factory=list)
    extmap_allow_mixed: bool = False
    extensions: list[HeaderExtension] = field(default_factory=list)




def parse(text: str, type: Literal["offer", "answer"]) -> SessionDescription:
    """Parse an SDP offer or answer.

    Raises `SdpError` (and nothing else) for any text that is not usable SDP, so the
    signaling layer can turn it into a `bad_request` without a catch-all.
    """
    if type not in ("offer", "answer"):
        raise SdpError(f"unknown description type {type!r}")
    session, sections = _scan(text)
    return _build(type, session, sections)


def _scan(text: str) -> tuple[_Session, list[_Section]]:
    """Every line checked and collected into session and per-m-line state."""
    if not isinstance(text, str):
        raise SdpError("SDP must be text")
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    session = _Session()
    sections: list[_Section] = []
    seen_version = False
    for lineno, line in enumerate(lines, 1):
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise SdpError(f"line {lineno}: not an SDP line: {line[:60]!r}")
        letter, value = m.group(1), m.group(2)
        if not seen_version:
            if letter != "v":
                raise SdpError("SDP must start with a v= line")
            if value.strip() != "0":
                raise SdpError(f"line {lineno}: unsupported SDP version {value!r}")
            seen_version = True
            continue
        if letter == "m":
            sections.append(_parse_mline(value, lineno))
        elif letter == "a":
            name, sep, val = value.partition(":")
            if sections:
                _media_attr(sections[-1], name, val if sep else None, lineno)
            else:
                _session_attr(session, name, val if sep else None, lineno)
    if not seen_version:
        raise SdpError("SDP must start with a v= line")
    return session, sections


def _parse_mline(value: str, lineno: int) -> _Section:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {lineno}: bad m= line {value[:60]!r}")
    kind, port_text, protocol, formats = parts[0], parts[1], parts[2], parts[3:]
    port = _int(port_text.split("/", 1)[0], f"line {lineno}: m= port", 0, 65535)
    section = _Section(kind=kind, port=port, protocol=protocol, formats=formats, lineno=lineno)
    if section.is_rtp:
        if not formats:
            raise SdpError(f"line {lineno}: m= line lists no payload types")
        for fmt in formats:
            _pt(fmt, f"line {lineno}: m= payload type")
    return section


def _transport_attr(at: _Session | _Section, name: str, value: str | None, where: str) -> bool:
    """ICE credentials and DTLS parameters, at session or media level; False for others."""
    if name == "ice-ufrag":
        at.ice_ufrag = _required(value, where)
    elif name == "ice-pwd":
        at.ice_pwd = _required(value, where)
    elif name == "fingerprint":
        at.fingerprints.append(_fingerprint(value, where))
    elif name == "setup":
        at.setup = _setup(value, where)
    else:
        return False
    return True


def _session_attr(session: _Session, name: str, value: str | None, lineno: int) -> None:
    where = f"line {lineno}: a={name}"
    if _transport_attr(session, name, value, where):
        return
    if name == "ice-lite":
        session.ice_lite = True
    elif name == "extmap-allow-mixed":
        session.extmap_allow_mixed = True
    elif name == "extmap":
        session.extensions.append(_extmap(value, where))
    elif name == "group":
        tokens = _required(value, where).split()
        if tokens and tokens[0] == "BUNDLE" and not session.bundle:
            session.bundle = tokens[1:]


def _required(value: str | None, where: str) -> str:
    if value is None or not value.strip():
        raise SdpError(f"{where}: missing value")
    return value.strip()


def _fingerprint(value: str | None, where: str) -> tuple[str, str]:
    parts = _required(value, where).split()
    if len(parts) != 2:
        raise SdpError(f"{where}: expected '<hash> <fingerprint>'")
    return parts[0].lower(), parts[1].upper()


def _setup(value: str | None, where: str) -> str:
    setup = _required(value, where)
    if setup not in _SETUPS:
        raise SdpError(f"{where}: unsupported setup {setup!r}")
    return setup


def _extmap(value: str | None, where: str) -> HeaderExtension:
    parts = _required(value, where).split()
    if len(parts) < 2:
        raise SdpError(f"{where}: expected '<id>[/<direction>] <uri>'")
    ext_id = _int(parts[0].split("/", 1)[0], f"{where} id", 1, 255)
    return HeaderExtension(id=ext_id, uri=parts[1])


def _media_attr(s: _Section, name: str, value: str | None, lineno: int) -> None:  # noqa: C901
    """One a= line inside an m-section. A flat dispatch is the clearest form here."""
    where = f"line {lineno}: a={name}"
    if _transport_attr(s, name, value, where):
        return
    if name in _DIRECTIONS:
        s.direction = name
    elif name == "mid":
        s.mid = _required(value, where)
    elif name == "rtpmap":
        _rtpmap(s, _required(value, where), where)
    elif name == "fmtp":
        pt_text, _, params = _required(value, where).partition(" ")
        if s.is_rtp:
            s.fmtp[_pt(pt_text, where)] = _split_fmtp(params)
    elif name == "rtcp-fb":
        parts = _required(value, where).split()
        if len(parts) < 2:
            raise SdpError(f"{where}: expected '<pt> <type> [<param>]'")
        if parts[0] != "*":
            _pt(parts[0], where)
        s.feedback.append((parts[0], parts[1], " ".join(parts[2:]) or None))
    elif name == "extmap":
        s.extensions.append(_extmap(value, where))
    elif name == "msid":
        s.msid = _msid(_required(value, where))
    elif name == "ssrc":
        _ssrc(s, _required(value, where), where)
    elif name == "ssrc-group":
        parts = _required(value, where).split()
        s.ssrc_groups.append((parts[0], [_int(p, where) for p in parts[1:]]))
        for ssrc in s.ssrc_groups[-1][1]:
            s.note_ssrc(ssrc)
    elif name == "rid":
        parts = _required(value, where).split()
        if len(parts) < 2 or parts[1] not in ("send", "recv"):
            raise SdpError(f"{where}: expected '<rid> send|recv [restrictions]'")
        s.rids.setdefault(parts[0], parts[1])
    elif name == "simulcast":
        _simulcast_attr(s, _required(value, where), where)
    elif name == "candidate":
        cand = _required(value, where)
        if cand not in s.candidates:
            s.candidates.append(cand)
    elif name == "rtcp-mux":
        s.rtcp_mux = True
    elif name == "rtcp-rsize":
        s.rtcp_rsize = True
    elif name == "bundle-only":
        s.bundle_only = True


def _rtpmap(s: _Section, value: str, where: str) -> None:
    pt_text, _, desc = value.partition(" ")
    pt = _pt(pt_text, where)
    if pt_text not in s.formats:
        raise SdpError(f"{where}: rtpmap for payload type {pt} not in the m= line")
    bits = desc.strip().split("/")
    if len(bits) not in (2, 3) or not bits[0]:
        raise SdpError(f"{where}: expected '<pt> <name>/<clock rate>[/<channels>]'")
    clock = _int(bits[1], f"{where} clock rate", 1)
    channels: int | None = _int(bits[2], f"{where} channels", 1, 255) if len(bits) == 3 else None
    if s.kind == "audio" and channels is None:
        channels = 1
    s.rtpmap[pt] = (bits[0], clock, channels)


def _msid(value: str) -> tuple[str, str]:
    parts = value.split()
    return (parts[0], parts[1] if len(parts) > 1 else "")


def _ssrc(s: _Section, value: str, where: str) -> None:
    ssrc_text, _, rest = value.partition(" ")
    ssrc = _int(ssrc_text, f"{where} ssrc")
    s.note_ssrc(ssrc)
    attr, _, attr_value = rest.strip().partition(":")
    if attr:
        s.ssrc_attrs[ssrc].setdefault(attr, attr_value)


def _simulcast_attr(s: _Section, value: str, where: str) -> None:
    tokens = value.split()
    if len(tokens) % 2 or not tokens:
        raise SdpError(f"{where}: expected 'send|recv <streams>' pairs")
    for direction, streams in zip(tokens[::2], tokens[1::2], strict=True):
        if direction not in ("send", "recv"):
            raise SdpError(f"{where}: unknown simulcast direction {direction!r}")
        if streams.startswith("rid="):  # pre-RFC 8853 syntax (old Firefox)
            streams = streams[4:]
        s.simulcast.setdefault(direction, streams)


def _simulcast_encodings(s: _Section) -> list[Encoding]:
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


def _ssrc_encodings(s: _Section) -> list[Encoding]:
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


def _codecs(s: _Section) -> list[RtpCodec]:
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
    type: Literal["offer", "answer"], sess: _Session, sections: list[_Section]
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
            md.msid = _msid(legacy[0]) if legacy else None
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
    type: str, sess: _Session, sections: list[_Section], media: list[MediaDescription]
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
    _, sections = _scan(text)
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
