"""SDP text, line by line: every line checked, collected per session and per m-line.

`scan` is the first half of reading SDP (`parse` builds `media.ortc` objects from what
it collects); `SdpError` is the one error anything in `signaling.sdp` raises for text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from media.ortc import HeaderExtension

__all__ = ["SdpError", "Section", "Session", "msid", "scan"]


class SdpError(ValueError):
    """Malformed or unacceptable SDP. Signaling maps it to a `bad_request` error."""


_DIRECTIONS = ("sendonly", "recvonly", "sendrecv", "inactive")
_SETUPS = ("actpass", "active", "passive")
_LINE = re.compile(r"^([a-z])=(.*)$")


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
class Section:
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
class Session:
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    ice_lite: bool = False
    bundle: list[str] = field(default_factory=list)
    extmap_allow_mixed: bool = False
    extensions: list[HeaderExtension] = field(default_factory=list)




def scan(text: str) -> tuple[Session, list[Section]]:
    """Every line checked and collected into session and per-m-line state."""
    if not isinstance(text, str):
        raise SdpError("SDP must be text")
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    session = Session()
    sections: list[Section] = []
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


def _parse_mline(value: str, lineno: int) -> Section:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {lineno}: bad m= line {value[:60]!r}")
    kind, port_text, protocol, formats = parts[0], parts[1], parts[2], parts[3:]
    port = _int(port_text.split("/", 1)[0], f"line {lineno}: m= port", 0, 65535)
    section = Section(kind=kind, port=port, protocol=protocol, formats=formats, lineno=lineno)
    if section.is_rtp:
        if not formats:
            raise SdpError(f"line {lineno}: m= line lists no payload types")
        for fmt in formats:
            _pt(fmt, f"line {lineno}: m= payload type")
    return section


def _transport_attr(at: Session | Section, name: str, value: str | None, where: str) -> bool:
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


def _session_attr(session: Session, name: str, value: str | None, lineno: int) -> None:
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


def _media_attr(s: Section, name: str, value: str | None, lineno: int) -> None:  # noqa: C901
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
        s.msid = msid(_required(value, where))
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


def _rtpmap(s: Section, value: str, where: str) -> None:
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


def msid(value: str) -> tuple[str, str]:
    parts = value.split()
    return (parts[0], parts[1] if len(parts) > 1 else "")


def _ssrc(s: Section, value: str, where: str) -> None:
    ssrc_text, _, rest = value.partition(" ")
    ssrc = _int(ssrc_text, f"{where} ssrc")
    s.note_ssrc(ssrc)
    attr, _, attr_value = rest.strip().partition(":")
    if attr:
        s.ssrc_attrs[ssrc].setdefault(attr, attr_value)


def _simulcast_attr(s: Section, value: str, where: str) -> None:
    tokens = value.split()
    if len(tokens) % 2 or not tokens:
        raise SdpError(f"{where}: expected 'send|recv <streams>' pairs")
    for direction, streams in zip(tokens[::2], tokens[1::2], strict=True):
        if direction not in ("send", "recv"):
            raise SdpError(f"{where}: unknown simulcast direction {direction!r}")
        if streams.startswith("rid="):  # pre-RFC 8853 syntax (old Firefox)
            streams = streams[4:]
        s.simulcast.setdefault(direction, streams)
