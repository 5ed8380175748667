"""SDP <-> `media.ortc` objects, for Ferry's two PeerConnections per participant.

Why Ferry parses SDP itself instead of using `aiortc.sdp`: aiortc drops a=rid and
a=simulcast, and Ferry's whole point is receiving simulcast (DESIGN §2). Everything SDP
lives here so the media engine only ever sees `media.ortc` dataclasses.

What Ferry is, as seen from SDP: ICE-lite, one BUNDLEd transport, rtcp-mux only, and
always the DTLS server (`a=setup:passive` in answers, `actpass` in its own offers; browsers
answer an actpass offer with `active`).

Public API:
- `parse(text, type)`: any offer/answer text -> `SessionDescription`; raises only `SdpError`.
- `answer_publisher(offer, transport=...)`: answer the client's publisher offer.
- `offer_subscriber(sections, transport=..., session_id=..., version=...)`: Ferry's offer
  on the subscriber PeerConnection; `default_subscriber_codecs` and
  `default_subscriber_extensions` supply Ferry's payload types and extension ids.
- `negotiated_subscriber(offer_sections, answer)`: what the client accepted of that offer.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from media.ortc import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
    Encoding,
    HeaderExtension,
    MediaDescription,
    RtpCodec,
    SessionDescription,
    TransportParameters,
)

__all__ = [
    "DEFAULT_EXTENSIONS",
    "SdpError",
    "answer_publisher",
    "default_subscriber_codecs",
    "default_subscriber_extensions",
    "negotiated_subscriber",
    "offer_subscriber",
    "parse",
]


class SdpError(ValueError):
    """Malformed or unacceptable SDP. Signaling maps it to a `bad_request` error."""


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
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 4566 token (mid, rid, ...)


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


def _format_fmtp(params: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" if v != "" else k for k, v in params.items())


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
    return _build(type, session, sections)


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


def _session_attr(session: _Session, name: str, value: str | None, lineno: int) -> None:
    where = f"line {lineno}: a={name}"
    if name == "ice-ufrag":
        session.ice_ufrag = _required(value, where)
    elif name == "ice-pwd":
        session.ice_pwd = _required(value, where)
    elif name == "fingerprint":
        session.fingerprints.append(_fingerprint(value, where))
    elif name == "setup":
        session.setup = _setup(value, where)
    elif name == "ice-lite":
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
    elif name == "ice-ufrag":
        s.ice_ufrag = _required(value, where)
    elif name == "ice-pwd":
        s.ice_pwd = _required(value, where)
    elif name == "fingerprint":
        s.fingerprints.append(_fingerprint(value, where))
    elif name == "setup":
        s.setup = _setup(value, where)
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


# --------------------------------------------------------------------------- writing


def _candidate_value(candidate: str) -> str:
    value = candidate.strip()
    for prefix in ("a=", "candidate:"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    return value


def _connection(transport: TransportParameters) -> tuple[int, str]:
    """m= port and c= line from Ferry's first candidate (JSEP: the default candidate)."""
    for cand in transport.candidates:
        parts = _candidate_value(cand).split()
        if len(parts) >= 6 and parts[5].isdigit():
            addr = parts[4]
            family = "IP6" if ":" in addr else "IP4"
            return int(parts[5]), f"c=IN {family} {addr}"
    return 9, "c=IN IP4 0.0.0.0"


def _transport_lines(transport: TransportParameters, setup: str) -> list[str]:
    lines = [f"a=candidate:{_candidate_value(c)}" for c in transport.candidates]
    if transport.candidates:
        lines.append("a=end-of-candidates")  # ICE-lite: Ferry never trickles more
    lines += [f"a=ice-ufrag:{transport.ice_ufrag}", f"a=ice-pwd:{transport.ice_pwd}"]
    lines += [f"a=fingerprint:{alg} {fp}" for alg, fp in transport.fingerprints]
    lines.append(f"a=setup:{setup}")
    return lines


def _codec_lines(codec: RtpCodec) -> list[str]:
    name = f"{codec.name}/{codec.clock_rate}"
    if codec.channels is not None and codec.channels != 1:
        name += f"/{codec.channels}"
    lines = [f"a=rtpmap:{codec.payload_type} {name}"]
    for fb_type, fb_param in codec.rtcp_feedback:
        lines.append(
            f"a=rtcp-fb:{codec.payload_type} {fb_type}" + (f" {fb_param}" if fb_param else "")
        )
    if codec.parameters:
        lines.append(f"a=fmtp:{codec.payload_type} {_format_fmtp(codec.parameters)}")
    if codec.rtx_payload_type is not None:
        lines.append(f"a=rtpmap:{codec.rtx_payload_type} rtx/{codec.clock_rate}")
        lines.append(f"a=fmtp:{codec.rtx_payload_type} apt={codec.payload_type}")
    return lines


def _payload_types(codecs: Sequence[RtpCodec]) -> list[int]:
    pts: list[int] = []
    for codec in codecs:
        pts.append(codec.payload_type)
        if codec.rtx_payload_type is not None:
            pts.append(codec.rtx_payload_type)
    return pts


def _rejected_lines(md: MediaDescription) -> list[str]:
    """A rejected m-section: port 0, the offered proto/formats, and its mid (JSEP 5.3.1)."""
    formats = md.formats or [str(pt) for pt in _payload_types(md.codecs)] or ["0"]
    lines = [f"m={md.kind} 0 {md.protocol} {' '.join(formats)}", "c=IN IP4 0.0.0.0"]
    lines.append(f"a=mid:{md.mid}")
    if md.kind in ("audio", "video"):
        lines.append("a=inactive")
    return lines


def _session_lines(
    session_id: int, version: int, bundle: Sequence[str], allow_mixed: bool
) -> list[str]:
    lines = ["v=0", f"o=- {session_id} {version} IN IP4 0.0.0.0", "s=-", "t=0 0", "a=ice-lite"]
    if bundle:
        lines.append(f"a=group:BUNDLE {' '.join(bundle)}")
    if allow_mixed:
        lines.append("a=extmap-allow-mixed")
    lines.append("a=msid-semantic:WMS *")
    return lines


def _join(lines: Iterable[str]) -> str:
    return "".join(f"{line}\r\n" for line in lines)


# --------------------------------------------------------------------------- publisher


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
    lines = _session_lines(sid, 2, bundle, allow_mixed)
    port, conn = _connection(answer_transport)
    for m in answered:
        if m.rejected:
            lines += _rejected_lines(m)
            continue
        lines.append(
            f"m={m.kind} {port} {m.protocol} {' '.join(map(str, _payload_types(m.codecs)))}"
        )
        lines.append(conn)
        lines += _transport_lines(answer_transport, "passive")
        lines.append(f"a=mid:{m.mid}")
        lines += [f"a=extmap:{e.id} {e.uri}" for e in m.header_extensions]
        lines.append(f"a={m.direction}")
        lines.append("a=rtcp-mux")
        if m.rtcp_rsize:
            lines.append("a=rtcp-rsize")
        for codec in m.codecs:
            lines += _codec_lines(codec)
        if m.simulcast:
            lines += [f"a=rid:{e.rid} recv" for e in m.encodings]
            streams = ";".join(("~" if e.paused else "") + str(e.rid) for e in m.encodings)
            lines.append(f"a=simulcast:recv {streams}")
    return _join(lines), negotiated


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
        formats=[str(pt) for pt in _payload_types(codecs)],
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


def default_subscriber_codecs(kind: str, *, red: bool = False) -> list[RtpCodec]:
    """Ferry's payload types on subscriber PCs (Chrome's numbers, so rewriting is rare).

    Audio: opus 111 and, with `red`, RED 63 (opus/opus) after it, so a client that does
    not understand RED still picks opus. Video: VP8 96/rtx 97, H264 102/rtx 103.
    """
    if kind == "audio":
        codecs = [
            RtpCodec(
                111,
                "opus",
                48000,
                2,
                {"minptime": "10", "useinbandfec": "1"},
                [("transport-cc", None), ("nack", None)],
                kind="audio",
            )
        ]
        if red:
            codecs.append(RtpCodec(63, "red", 48000, 2, {"111/111": ""}, [], kind="audio"))
        return codecs
    if kind == "video":
        fb: list[tuple[str, str | None]] = [
            ("goog-remb", None),
            ("transport-cc", None),
            ("ccm", "fir"),
            ("nack", None),
            ("nack", "pli"),
        ]
        return [
            RtpCodec(96, "VP8", 90000, None, {}, list(fb), rtx_payload_type=97, kind="video"),
            RtpCodec(
                102,
                "H264",
                90000,
                None,
                {
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": "42e01f",
                },
                list(fb),
                rtx_payload_type=103,
                kind="video",
            ),
        ]
    raise ValueError(f"no subscriber codecs for kind {kind!r}")


def default_subscriber_extensions(kind: str) -> list[HeaderExtension]:
    """Extension ids Ferry writes towards subscribers (same ids Chrome uses)."""
    exts = [
        HeaderExtension(4, EXT_MID),
        HeaderExtension(2, EXT_ABS_SEND_TIME),
        HeaderExtension(3, EXT_TWCC),
    ]
    if kind == "audio":
        exts.insert(0, HeaderExtension(1, EXT_AUDIO_LEVEL))
    return exts


def offer_subscriber(
    sections: list[MediaDescription],
    *,
    transport: TransportParameters,
    session_id: int,
    version: int,
) -> str:
    """Ferry's offer on a subscriber PC: one sendonly m-line per subscribed track.

    Sections are written in the given order with the given mids; callers keep mids stable
    and recycle a removed track's section as "inactive" (or mark it `rejected` to stop it).
    Inactive sections carry no msid/ssrc so the client ends that track.
    """
    live = [s for s in sections if not s.rejected]
    lines = _session_lines(session_id, version, [s.mid for s in live], False)
    port, conn = _connection(transport)
    for s in sections:
        if s.rejected:
            lines += _rejected_lines(s)
            continue
        if not s.codecs:
            raise ValueError(f"subscriber section {s.mid!r} has no codecs")
        lines.append(
            f"m={s.kind} {port} UDP/TLS/RTP/SAVPF {' '.join(map(str, _payload_types(s.codecs)))}"
        )
        lines.append(conn)
        lines += _transport_lines(transport, "actpass")
        lines.append(f"a=mid:{s.mid}")
        lines += [f"a=extmap:{e.id} {e.uri}" for e in s.header_extensions]
        lines.append(f"a={s.direction}")
        sending = s.direction in ("sendonly", "sendrecv")
        if sending and s.msid is not None:
            lines.append(f"a=msid:{s.msid[0]} {s.msid[1]}".rstrip())
        lines += ["a=rtcp-mux", "a=rtcp-rsize"]
        for codec in s.codecs:
            lines += _codec_lines(codec)
        if sending and s.encodings and s.encodings[0].ssrc is not None:
            lines += _ssrc_lines(s, s.encodings[0])
    return _join(lines)


def _ssrc_lines(s: MediaDescription, enc: Encoding) -> list[str]:
    cname = s.cname or "ferry"
    ssrcs = [enc.ssrc]
    lines = []
    if enc.rtx_ssrc is not None and any(c.rtx_payload_type is not None for c in s.codecs):
        ssrcs.append(enc.rtx_ssrc)
        lines.append(f"a=ssrc-group:FID {enc.ssrc} {enc.rtx_ssrc}")
    for ssrc in ssrcs:
        lines.append(f"a=ssrc:{ssrc} cname:{cname}")
        if s.msid is not None:
            lines.append(f"a=ssrc:{ssrc} msid:{s.msid[0]} {s.msid[1]}".rstrip())
    return lines


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
