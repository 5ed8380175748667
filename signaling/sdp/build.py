"""`media.ortc` objects -> SDP text: one writer for every description Ferry's code sends.

Ferry's side: `offer_subscriber` (its offer on a subscriber PeerConnection, with the
payload types of `default_subscriber_codecs` and the ids of
`default_subscriber_extensions`); `negotiate` writes Ferry's publisher answer with the
same section writer. The clients' side: `build_publisher_offer`, a Chrome-shaped
publisher offer (`negotiate.build_subscriber_answer` is the subscriber answer).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

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
    TransportParameters,
)

from .parse import candidate_address, candidate_value

__all__ = [
    "PUBLISHER_EXTENSION_IDS",
    "PT_OPUS",
    "PT_RTX",
    "PT_VP8",
    "build_publisher_offer",
    "default_subscriber_codecs",
    "default_subscriber_extensions",
    "offer_subscriber",
]

# Payload types of the clients' publisher offer and of Ferry's subscriber offers:
# Chrome's numbers, so the fixture-tested parts of Ferry see what a browser would send.
PT_OPUS = 111
PT_VP8 = 96
PT_RTX = 97
#: Header extension ids of the clients' publisher offer, by URI (Chrome's ids).
PUBLISHER_EXTENSION_IDS: dict[str, int] = {
    EXT_AUDIO_LEVEL: 1,
    EXT_ABS_SEND_TIME: 2,
    EXT_TWCC: 3,
    EXT_MID: 4,
    EXT_RID: 10,
    EXT_REPAIRED_RID: 11,
}
_VIDEO_FEEDBACK: tuple[tuple[str, str | None], ...] = (
    ("goog-remb", None),
    ("transport-cc", None),
    ("ccm", "fir"),
    ("nack", None),
    ("nack", "pli"),
)


# --------------------------------------------------------------------------- lines


def format_fmtp(params: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" if v != "" else k for k, v in params.items())


def connection(transport: TransportParameters) -> tuple[int, str]:
    """m= port and c= line from the first candidate (JSEP: the default candidate)."""
    for cand in transport.candidates:
        addr = candidate_address(cand)
        if addr is not None:
            family = "IP6" if ":" in addr[1] else "IP4"
            return addr[2], f"c=IN {family} {addr[1]}"
    return 9, "c=IN IP4 0.0.0.0"


def transport_lines(transport: TransportParameters, setup: str) -> list[str]:
    lines = [f"a=candidate:{candidate_value(c)}" for c in transport.candidates]
    if transport.candidates:
        lines.append("a=end-of-candidates")  # every candidate is in the description
    lines += [f"a=ice-ufrag:{transport.ice_ufrag}", f"a=ice-pwd:{transport.ice_pwd}"]
    lines += [f"a=fingerprint:{alg} {fp}" for alg, fp in transport.fingerprints]
    lines.append(f"a=setup:{setup}")
    return lines


def codec_lines(codec: RtpCodec) -> list[str]:
    name = f"{codec.name}/{codec.clock_rate}"
    if codec.channels is not None and codec.channels != 1:
        name += f"/{codec.channels}"
    lines = [f"a=rtpmap:{codec.payload_type} {name}"]
    for fb_type, fb_param in codec.rtcp_feedback:
        lines.append(
            f"a=rtcp-fb:{codec.payload_type} {fb_type}" + (f" {fb_param}" if fb_param else "")
        )
    if codec.parameters:
        lines.append(f"a=fmtp:{codec.payload_type} {format_fmtp(codec.parameters)}")
    if codec.rtx_payload_type is not None:
        lines.append(f"a=rtpmap:{codec.rtx_payload_type} rtx/{codec.clock_rate}")
        lines.append(f"a=fmtp:{codec.rtx_payload_type} apt={codec.payload_type}")
    return lines


def payload_types(codecs: Sequence[RtpCodec]) -> list[int]:
    pts: list[int] = []
    for codec in codecs:
        pts.append(codec.payload_type)
        if codec.rtx_payload_type is not None:
            pts.append(codec.rtx_payload_type)
    return pts


def rejected_lines(md: MediaDescription) -> list[str]:
    """A rejected m-section: port 0, the offered proto/formats, and its mid (JSEP 5.3.1)."""
    formats = md.formats or [str(pt) for pt in payload_types(md.codecs)] or ["0"]
    lines = [f"m={md.kind} 0 {md.protocol} {' '.join(formats)}", "c=IN IP4 0.0.0.0"]
    lines.append(f"a=mid:{md.mid}")
    if md.kind in ("audio", "video"):
        lines.append("a=inactive")
    return lines


def session_lines(
    session_id: int, version: int, bundle: Sequence[str], allow_mixed: bool, *, ice_lite: bool
) -> list[str]:
    lines = ["v=0", f"o=- {session_id} {version} IN IP4 0.0.0.0", "s=-", "t=0 0"]
    if ice_lite:
        lines.append("a=ice-lite")
    if bundle:
        lines.append(f"a=group:BUNDLE {' '.join(bundle)}")
    if allow_mixed:
        lines.append("a=extmap-allow-mixed")
    lines.append("a=msid-semantic:WMS *")
    return lines


def media_lines(
    md: MediaDescription, transport: TransportParameters, setup: str, *, rtcp_rsize: bool
) -> list[str]:
    """One accepted m-section, every transport on the shared (BUNDLE) transport.

    A sending section carries its msid, and either its simulcast rids or its first
    encoding's SSRCs; a receiving one lists the simulcast rids it accepts.
    """
    port, conn = connection(transport)
    lines = [f"m={md.kind} {port} {md.protocol} {' '.join(map(str, payload_types(md.codecs)))}"]
    lines.append(conn)
    lines += transport_lines(transport, setup)
    lines.append(f"a=mid:{md.mid}")
    lines += [f"a=extmap:{e.id} {e.uri}" for e in md.header_extensions]
    lines.append(f"a={md.direction}")
    sending = md.direction in ("sendonly", "sendrecv")
    if sending and md.msid is not None:
        lines.append(f"a=msid:{md.msid[0]} {md.msid[1]}".rstrip())
    lines.append("a=rtcp-mux")
    if rtcp_rsize:
        lines.append("a=rtcp-rsize")
    for codec in md.codecs:
        lines += codec_lines(codec)
    if md.simulcast:
        way = "send" if sending else "recv"
        lines += [f"a=rid:{e.rid} {way}" for e in md.encodings]
        streams = ";".join(("~" if e.paused else "") + str(e.rid) for e in md.encodings)
        lines.append(f"a=simulcast:{way} {streams}")
    elif sending and md.encodings and md.encodings[0].ssrc is not None:
        lines += _ssrc_lines(md, md.encodings[0])
    return lines


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


def join(lines: Iterable[str]) -> str:
    return "".join(f"{line}\r\n" for line in lines)


# --------------------------------------------------------------------------- Ferry's offer


def default_subscriber_codecs(kind: str, *, red: bool = False) -> list[RtpCodec]:
    """Ferry's payload types on subscriber PCs (Chrome's numbers, so rewriting is rare).

    Audio: opus 111 and, with `red`, RED 63 (opus/opus) after it, so a client that does
    not understand RED still picks opus. Video: VP8 96/rtx 97, H264 102/rtx 103.
    """
    if kind == "audio":
        codecs = [
            RtpCodec(
                PT_OPUS,
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
        return [
            RtpCodec(
                PT_VP8, "VP8", 90000, None, {}, list(_VIDEO_FEEDBACK), rtx_payload_type=PT_RTX,
                kind="video",
            ),
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
                list(_VIDEO_FEEDBACK),
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
    lines = session_lines(session_id, version, [s.mid for s in live], False, ice_lite=True)
    for s in sections:
        if s.rejected:
            lines += rejected_lines(s)
            continue
        if not s.codecs:
            raise ValueError(f"subscriber section {s.mid!r} has no codecs")
        lines += media_lines(s, transport, "actpass", rtcp_rsize=True)
    return join(lines)


# --------------------------------------------------------------------------- clients' offer


def build_publisher_offer(
    *,
    ufrag: str,
    pwd: str,
    fingerprint: tuple[str, str],
    port: int,
    audio_ssrc: int | None,
    video_ssrcs: Sequence[tuple[int, int]] | None,
    rids: Sequence[str] | None,
    stream_id: str,
    audio_track_id: str,
    video_track_id: str,
    cname: str,
    host: str = "127.0.0.1",
    session_id: int | None = None,
) -> str:
    """Chrome-shaped publisher offer: sendonly opus and VP8(+rtx), BUNDLE, rtcp-mux.

    With ``rids`` the video m-line carries ``a=rid:<rid> send`` and
    ``a=simulcast:send q;h;f`` and no SSRC lines (Ferry learns SSRCs from MID/RID, as
    with Chrome, DESIGN §8); otherwise ``video_ssrcs[0]`` is announced with an FID group.
    Payload types are `PT_OPUS`, `PT_VP8`/`PT_RTX`, extension ids
    `PUBLISHER_EXTENSION_IDS`.
    """
    transport = TransportParameters(
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        fingerprints=[fingerprint],
        candidates=[f"1 1 udp 2122260223 {host} {port} typ host"],
    )
    sections: list[MediaDescription] = []

    def send(kind: str, codec: RtpCodec, uris: Sequence[str], encodings: list[Encoding],
             track_id: str) -> None:
        sections.append(
            MediaDescription(
                mid=str(len(sections)),
                kind=kind,
                direction="sendonly",
                codecs=[codec],
                header_extensions=[HeaderExtension(PUBLISHER_EXTENSION_IDS[u], u) for u in uris],
                encodings=encodings,
                msid=(stream_id, track_id),
                cname=cname,
                simulcast=encodings[0].rid is not None,
            )
        )

    if audio_ssrc is not None:
        opus = RtpCodec(
            PT_OPUS, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"},
            [("transport-cc", None)],
        )
        uris = (EXT_AUDIO_LEVEL, EXT_ABS_SEND_TIME, EXT_TWCC, EXT_MID)
        send("audio", opus, uris, [Encoding(ssrc=audio_ssrc)], audio_track_id)
    if video_ssrcs:
        vp8 = RtpCodec(PT_VP8, "VP8", 90000, None, {}, list(_VIDEO_FEEDBACK), PT_RTX)
        uris = (EXT_ABS_SEND_TIME, EXT_TWCC, EXT_MID, EXT_RID, EXT_REPAIRED_RID)
        if rids:
            encodings = [Encoding(rid=rid) for rid in rids]
        else:
            encodings = [Encoding(ssrc=video_ssrcs[0][0], rtx_ssrc=video_ssrcs[0][1])]
        send("video", vp8, uris, encodings, video_track_id)
    sid = session_id if session_id is not None else random.getrandbits(62)
    lines = session_lines(sid, 2, [s.mid for s in sections], True, ice_lite=False)
    for s in sections:
        lines += media_lines(s, transport, "actpass", rtcp_rsize=True)
    return join(lines)
