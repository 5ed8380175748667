"""signaling.sdp against real client SDP: Chromium fixtures and aiortc as a live peer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.ortc import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
    Encoding,
    MediaDescription,
    TransportParameters,
)
from signaling.sdp import (
    DEFAULT_EXTENSIONS,
    SdpError,
    answer_publisher,
    default_subscriber_codecs,
    default_subscriber_extensions,
    negotiated_subscriber,
    offer_subscriber,
    parse,
)

FIXTURES = Path(__file__).parent / "fixtures"
CHROME_OFFER = (FIXTURES / "chromium156-simulcast-offer.sdp").read_text()
ACCEPTED_ANSWER = (FIXTURES / "aiortc-answer-with-simulcast-accepted.sdp").read_text()

FP = "sha-256", ":".join(["AB"] * 32)


def ferry_transport(candidates: bool = True) -> TransportParameters:
    return TransportParameters(
        ice_ufrag="fErY",
        ice_pwd="ferrypasswordferrypassw0",
        fingerprints=[FP],
        candidates=["1 1 udp 2130706431 127.0.0.1 7882 typ host"] if candidates else [],
    )


def lines_of(text: str) -> list[str]:
    return text.split("\r\n")


def media_blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in lines_of(text):
        if line.startswith("m="):
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    return blocks


# --------------------------------------------------------------------------- parse


def test_parse_chromium_simulcast_offer() -> None:
    offer = parse(CHROME_OFFER, "offer")
    assert offer.type == "offer"
    assert offer.bundle == ["0", "1"]
    assert offer.extmap_allow_mixed
    t = offer.transport
    assert (t.ice_ufrag, t.ice_pwd) == ("pF3j", "Av60U2o9nfZmPryMg+u/2p9U")
    assert t.fingerprints[0][0] == "sha-256" and t.fingerprints[0][1].startswith("70:A1:5E")
    assert t.setup == "actpass" and not t.ice_lite
    assert t.candidates[0].startswith("1393453862 1 udp 2122260223 127.0.0.1 51533 typ host")

    audio, video = offer.media
    assert (audio.mid, audio.kind, audio.direction) == ("0", "audio", "sendonly")
    assert [c.name for c in audio.codecs[:2]] == ["opus", "red"]
    opus, red = audio.codecs[:2]
    assert (opus.payload_type, opus.clock_rate, opus.channels) == (111, 48000, 2)
    assert opus.parameters == {"minptime": "10", "useinbandfec": "1"}
    assert opus.has_feedback("transport-cc")
    assert red.payload_type == 63 and red.parameters == {"111/111": ""}
    assert audio.extension_id(EXT_AUDIO_LEVEL) == 1
    assert audio.extension_id(EXT_MID) == 4
    assert audio.encodings == [Encoding(ssrc=573889840)]
    assert audio.cname == "vc9fVatkyBZL8Y0N"
    assert audio.msid == (
        "c33670a8-9f7b-4a6f-ba87-aea722540307",
        "7f89dec9-72cf-48ec-bc3b-8a8f6a9323b3",
    )
    assert audio.rtcp_mux and audio.rtcp_rsize and not audio.simulcast

    assert (video.mid, video.kind, video.direction) == ("1", "video", "sendrecv")
    assert video.simulcast
    assert [e.rid for e in video.encodings] == ["q", "h", "f"]
    assert all(e.ssrc is None and not e.paused for e in video.encodings)
    vp8 = video.codecs[0]
    assert (vp8.name, vp8.payload_type, vp8.rtx_payload_type) == ("VP8", 96, 97)
    assert vp8.has_feedback("nack", "pli") and vp8.has_feedback("ccm", "fir")
    assert "rtx" not in {c.name for c in video.codecs}
    names = [c.name for c in video.codecs]
    assert "red" in names and "ulpfec" in names
    assert next(c for c in video.codecs if c.name == "red").mime == "video/red"
    ids = {e.uri: e.id for e in video.header_extensions}
    assert ids[EXT_MID] == 4 and ids[EXT_RID] == 10 and ids[EXT_REPAIRED_RID] == 11
    assert ids[EXT_TWCC] == 3 and ids[EXT_ABS_SEND_TIME] == 2


def test_parse_fixture_answer() -> None:
    answer = parse(ACCEPTED_ANSWER, "answer")
    assert answer.transport.setup == "active"
    assert len(answer.transport.fingerprints) == 3
    video = answer.media[1]
    assert video.simulcast and [e.rid for e in video.encodings] == ["q", "h", "f"]
    assert video.codecs[0].parameters["x-google-start-bitrate"] == "2500"


def minimal(media: str, session: str = "") -> str:
    return (
        "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nt=0 0\n"
        + session
        + "a=ice-ufrag:uf\na=ice-pwd:pwpwpwpwpwpwpwpwpwpwpwpw\n"
        + f"a=fingerprint:{FP[0]} {FP[1]}\na=setup:actpass\n"
        + media
    )


def test_parse_lf_session_level_and_wildcards() -> None:
    text = minimal(
        "m=video 9 UDP/TLS/RTP/SAVPF 100 101 102\n"
        "a=mid:v\n"
        "a=extmap:2/sendonly urn:ietf:params:rtp-hdrext:sdes:mid\n"
        "a=sendonly\na=rtcp-mux\n"
        "a=rtpmap:100 VP8/90000\na=rtpmap:101 rtx/90000\na=fmtp:101 apt=100\n"
        "a=rtpmap:102 H264/90000\na=fmtp:102 packetization-mode=1\n"
        "a=rtcp-fb:* nack\na=rtcp-fb:100 nack pli\n"
        "a=ssrc-group:FID 11 12\n"
        "a=ssrc:11 cname:cn\na=ssrc:11 msid:stream track\na=ssrc:12 cname:cn\n",
        session="a=ice-lite\na=group:BUNDLE v\n",
    )
    desc = parse(text, "offer")
    assert desc.transport.ice_lite and desc.transport.ice_ufrag == "uf"
    (video,) = desc.media
    assert video.extension_id(EXT_MID) == 2
    vp8, h264 = video.codecs
    assert vp8.rtx_payload_type == 101 and h264.rtx_payload_type is None
    assert vp8.rtcp_feedback == [("nack", None), ("nack", "pli")]
    assert h264.rtcp_feedback == [("nack", None)]
    assert video.encodings == [Encoding(ssrc=11, rtx_ssrc=12)]
    assert video.msid == ("stream", "track") and video.cname == "cn"


def test_parse_simulcast_paused_and_alternatives() -> None:
    text = minimal(
        "m=video 9 UDP/TLS/RTP/SAVPF 96\na=mid:0\na=sendonly\na=rtcp-mux\n"
        "a=rtpmap:96 VP8/90000\n"
        "a=rid:a send\na=rid:b send\na=rid:c send\na=rid:d recv\n"
        "a=simulcast:send a,b;~c;d;zz\n"
    )
    (video,) = parse(text, "offer").media
    # a,b are alternatives: first declared one wins; d is declared recv only; zz undeclared
    assert [(e.rid, e.paused) for e in video.encodings] == [("a", False), ("c", True)]


def test_parse_port_zero_and_other_kinds_rejected() -> None:
    text = minimal(
        "m=audio 0 UDP/TLS/RTP/SAVPF 111\na=mid:a\na=rtpmap:111 opus/48000/2\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=mid:d\na=sctp-port:5000\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\na=mid:b\na=bundle-only\na=rtcp-mux\n"
        "a=rtpmap:96 VP8/90000\n"
    )
    audio, app, video = parse(text, "offer").media
    assert audio.rejected and app.rejected and app.kind == "application"
    assert app.formats == ["webrtc-datachannel"]
    assert not video.rejected  # port 0 + bundle-only is not a rejection (JSEP)


def test_parse_rejected_media_needs_no_credentials() -> None:
    text = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n"
    desc = parse(text, "answer")
    assert desc.media[0].rejected and desc.media[0].codecs[0].name == "PCMU"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "v= line"),
        ("o=- 1 1 IN IP4 0.0.0.0\n", "v= line"),
        (minimal("m=audio\n"), "bad m= line"),
        (minimal("m=audio x UDP/TLS/RTP/SAVPF 111\n"), "number"),
        (minimal("m=audio 9 UDP/TLS/RTP/SAVPF opus\n"), "number"),
        (
            minimal("m=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:112 opus/48000/2\n"),
            "not in the m= line",
        ),
        (minimal("m=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:111 opus/fast\n"), "clock rate"),
        (minimal("m=audio 9 UDP/TLS/RTP/SAVPF 111\na=extmap:x urn:a\n"), "number"),
        (minimal("m=audio 9 UDP/TLS/RTP/SAVPF 111\na=ssrc:abc cname:x\n"), "ssrc"),
        (minimal("m=audio 9 UDP/TLS/RTP/SAVPF 111\na=simulcast:sideways a\n"), "simulcast"),
        ("v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:111 opus/48000/2\n", "ice-ufrag"),
        (
            "v=0\na=ice-ufrag:u\na=ice-pwd:p\nm=audio 9 UDP/TLS/RTP/SAVPF 111\n",
            "fingerprint",
        ),
        ("v=0\nthis is not sdp\n", "not an SDP line"),
    ],
)
def test_parse_malformed(text: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse(text, "offer")


SDP_LINES = [line for line in CHROME_OFFER.splitlines() if line] + [
    "a=simulcast:send q;~h,f",
    "a=simulcast:recv rid=a",
    "a=ssrc-group:SIM 1 2 3",
    "a=ssrc-group:FID 1",
    "a=rid:q send pt=96",
    "a=extmap:300 urn:x",
    "a=rtcp-fb:*",
    "a=fmtp:96",
    "a=bundle-only",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=group:BUNDLE",
    "a=msid:",
    "a=setup:holdconn",
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(SDP_LINES),
            st.sampled_from(SDP_LINES).flatmap(
                lambda line: st.integers(0, len(line)).flatmap(
                    lambda cut: st.text(max_size=8).map(lambda junk: line[:cut] + junk)
                )
            ),
            st.text(max_size=30),
        ),
        max_size=40,
    ),
    st.booleans(),
    st.sampled_from(["offer", "answer"]),
)
def test_parse_fuzz_only_raises_sdp_error(lines: list[str], lead_v: bool, kind: str) -> None:
    text = "\r\n".join((["v=0"] if lead_v else []) + lines)
    try:
        parse(text, kind)  # type: ignore[arg-type]
    except SdpError:
        pass


@settings(max_examples=200)
@given(st.text())
def test_parse_fuzz_arbitrary_text(text: str) -> None:
    try:
        parse(text, "offer")
    except SdpError:
        pass


# --------------------------------------------------------------------------- publisher


def test_answer_publisher_chromium_matches_accepted_answer() -> None:
    offer = parse(CHROME_OFFER, "offer")
    text, negotiated = answer_publisher(offer, transport=ferry_transport(), start_bitrate_kbps=2500)
    assert "\r\n" in text and "\n\n" not in text
    answer = parse(text, "answer")
    reference = parse(ACCEPTED_ANSWER, "answer")

    session_lines = lines_of(text.split("m=", 1)[0])
    assert "a=ice-lite" in session_lines and "a=group:BUNDLE 0 1" in session_lines
    assert any(line.startswith("a=msid-semantic:") for line in session_lines)
    assert answer.bundle == reference.bundle == ["0", "1"]
    assert answer.transport.setup == "passive" and answer.transport.ice_lite
    assert answer.transport.ice_ufrag == "fErY" and answer.transport.fingerprints == [FP]
    for block in media_blocks(text):
        for attr in (
            "a=mid:",
            "a=rtcp-mux",
            "a=ice-ufrag:",
            "a=ice-pwd:",
            "a=fingerprint:",
            "a=setup:passive",
            "a=end-of-candidates",
        ):
            assert any(line.startswith(attr) for line in block), attr
        assert block[0].split()[1] == "7882"

    audio, video = answer.media
    ref_audio, ref_video = reference.media
    assert audio.direction == "recvonly" == ref_audio.direction
    assert video.direction == "recvonly"  # offer was sendrecv; Ferry only receives here
    assert [(c.name, c.payload_type) for c in audio.codecs] == [("opus", 111), ("red", 63)]
    assert audio.codecs[0].parameters["useinbandfec"] == "1"

    assert video.simulcast and [e.rid for e in video.encodings] == [
        e.rid for e in ref_video.encodings
    ]
    assert "a=simulcast:recv q;h;f" in lines_of(text)
    assert [line for line in lines_of(text) if line.startswith("a=rid:")] == [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
    ]
    (vp8,) = video.codecs
    ref_vp8 = ref_video.codecs[0]
    assert (vp8.name, vp8.payload_type, vp8.rtx_payload_type) == (
        ref_vp8.name,
        ref_vp8.payload_type,
        ref_vp8.rtx_payload_type,
    )
    assert vp8.parameters == ref_vp8.parameters
    assert set(vp8.rtcp_feedback) == {
        ("goog-remb", None),
        ("transport-cc", None),
        ("ccm", "fir"),
        ("nack", None),
        ("nack", "pli"),
    }
    assert "H264" not in text  # VP8 preferred by the client and allowed

    for md in answer.media:
        assert {e.uri for e in md.header_extensions} <= DEFAULT_EXTENSIONS
    assert {e.uri: e.id for e in video.header_extensions} == {
        EXT_ABS_SEND_TIME: 2,
        EXT_TWCC: 3,
        EXT_MID: 4,
        EXT_RID: 10,
        EXT_REPAIRED_RID: 11,
    }
    assert {e.uri: e.id for e in audio.header_extensions}[EXT_AUDIO_LEVEL] == 1

    # The returned description is what the text says, plus what Ferry learned of the client.
    assert negotiated.type == "answer"
    assert [m.mid for m in negotiated.media] == ["0", "1"]
    assert negotiated.media[0].encodings == [Encoding(ssrc=573889840)]
    assert negotiated.media[1].msid == offer.media[1].msid
    assert negotiated.media[1].codecs[0].payload_type == 96


def test_answer_publisher_h264_only_when_allowed() -> None:
    offer = parse(CHROME_OFFER, "offer")
    text, negotiated = answer_publisher(offer, transport=ferry_transport(), video_codecs=("H264",))
    (h264,) = parse(text, "answer").media[1].codecs
    # 102 is the client's first H.264 with packetization-mode=1
    assert (h264.name, h264.payload_type, h264.rtx_payload_type) == ("H264", 102, 103)
    assert h264.parameters["profile-level-id"] == "42001f"
    assert "x-google-start-bitrate" not in h264.parameters
    assert negotiated.media[1].codecs[0].name == "H264"


def test_answer_publisher_red_order_and_opt_out() -> None:
    text = CHROME_OFFER.replace(
        "m=audio 51533 UDP/TLS/RTP/SAVPF 111 63 ", "m=audio 51533 UDP/TLS/RTP/SAVPF 63 111 "
    )
    offer = parse(text, "offer")
    answer_text, _ = answer_publisher(offer, transport=ferry_transport())
    assert [c.name for c in parse(answer_text, "answer").media[0].codecs] == ["red", "opus"]
    assert "m=audio 7882 UDP/TLS/RTP/SAVPF 63 111\r\n" in answer_text
    answer_text, negotiated = answer_publisher(offer, transport=ferry_transport(), accept_red=False)
    assert [c.name for c in negotiated.media[0].codecs] == ["opus"]
    assert "red/48000" not in answer_text


def test_answer_publisher_rejects_application_and_unsupported() -> None:
    text = minimal(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:0\na=sendonly\na=rtcp-mux\n"
        "a=rtpmap:111 opus/48000/2\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=mid:1\na=sctp-port:5000\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 98\na=mid:2\na=sendonly\na=rtcp-mux\n"
        "a=rtpmap:98 VP9/90000\n",
        session="a=group:BUNDLE 0 1 2\n",
    )
    answer_text, negotiated = answer_publisher(parse(text, "offer"), transport=ferry_transport())
    assert "a=group:BUNDLE 0\r\n" in answer_text
    blocks = media_blocks(answer_text)
    assert blocks[1][0] == "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"
    assert "a=mid:1" in blocks[1]
    assert blocks[2][0].startswith("m=video 0 ")
    answer = parse(answer_text, "answer")
    assert [m.rejected for m in answer.media] == [False, True, True]
    assert [m.rejected for m in negotiated.media] == [False, True, True]
    assert answer.bundle == ["0"]


def test_answer_publisher_refuses_passive_offer() -> None:
    offer = parse(CHROME_OFFER.replace("a=setup:actpass", "a=setup:passive"), "offer")
    with pytest.raises(SdpError, match="DTLS server"):
        answer_publisher(offer, transport=ferry_transport())


async def test_aiortc_publisher_accepts_answer() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        offer = await pc.createOffer()
        parsed = parse(offer.sdp, "offer")
        audio, video = parsed.media
        assert audio.codecs[0].name == "opus" and video.codecs[0].name == "VP8"
        assert video.encodings[0].ssrc is not None and video.encodings[0].rtx_ssrc is not None
        # No candidates in Ferry's answer: aiortc then has nowhere to send checks to.
        answer_text, negotiated = answer_publisher(
            parsed, transport=ferry_transport(candidates=False)
        )
        await pc.setLocalDescription(offer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_text, type="answer"))
        assert pc.signalingState == "stable"
        assert [t.currentDirection for t in pc.getTransceivers()] == ["sendonly", "sendonly"]
        assert negotiated.media[1].codecs[0].name == "VP8"
    finally:
        await pc.close()


# --------------------------------------------------------------------------- subscriber


def subscriber_sections() -> list[MediaDescription]:
    return [
        MediaDescription(
            mid="0",
            kind="audio",
            direction="sendonly",
            codecs=default_subscriber_codecs("audio", red=True),
            header_extensions=default_subscriber_extensions("audio"),
            encodings=[Encoding(ssrc=1111)],
            msid=("PA_alice", "TR_mic"),
            cname="alice",
        ),
        MediaDescription(
            mid="1",
            kind="video",
            direction="sendonly",
            codecs=default_subscriber_codecs("video"),
            header_extensions=default_subscriber_extensions("video"),
            encodings=[Encoding(ssrc=2222, rtx_ssrc=3333)],
            msid=("PA_alice", "TR_cam"),
            cname="alice",
        ),
        MediaDescription(
            mid="2",
            kind="video",
            direction="inactive",
            codecs=default_subscriber_codecs("video"),
            header_extensions=default_subscriber_extensions("video"),
        ),
    ]


def test_subscriber_offer_round_trips() -> None:
    sections = subscriber_sections()
    text = offer_subscriber(sections, transport=ferry_transport(), session_id=42, version=3)
    assert lines_of(text)[1] == "o=- 42 3 IN IP4 0.0.0.0"
    assert "a=ssrc-group:FID 2222 3333" in lines_of(text)
    assert "a=ssrc:2222 msid:PA_alice TR_cam" in lines_of(text)
    assert "a=fmtp:63 111/111" in lines_of(text)
    desc = parse(text, "offer")
    assert desc.bundle == ["0", "1", "2"]
    assert desc.transport.setup == "actpass" and desc.transport.ice_lite
    assert desc.transport.candidates == ferry_transport().candidates
    audio, video, recycled = desc.media
    assert [(c.name, c.payload_type) for c in audio.codecs] == [("opus", 111), ("red", 63)]
    assert audio.codecs[0].parameters == {"minptime": "10", "useinbandfec": "1"}
    assert audio.extension_id(EXT_AUDIO_LEVEL) == 1 and audio.extension_id(EXT_TWCC) == 3
    assert audio.encodings == [Encoding(ssrc=1111)] and audio.cname == "alice"
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [
        ("VP8", 96, 97),
        ("H264", 102, 103),
    ]
    assert video.encodings == [Encoding(ssrc=2222, rtx_ssrc=3333)]
    assert video.msid == ("PA_alice", "TR_cam") and video.direction == "sendonly"
    assert recycled.direction == "inactive" and recycled.msid is None and not recycled.encodings
    for original, parsed in zip(sections, desc.media, strict=True):
        assert parsed.codecs == original.codecs
        assert parsed.header_extensions == original.header_extensions


async def test_aiortc_subscriber_answers_offer() -> None:
    sections = subscriber_sections()
    text = offer_subscriber(sections, transport=ferry_transport(), session_id=7, version=1)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks = []
    pc.on("track", tracks.append)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="offer"))
        answer = await pc.createAnswer()
    finally:
        await pc.close()
    assert {t.kind for t in tracks} == {"audio", "video"}
    assert "TR_cam" in {t.id for t in tracks}
    parsed = parse(answer.sdp, "answer")
    assert [m.mid for m in parsed.media] == ["0", "1", "2"]
    negotiated = negotiated_subscriber(sections, parsed)
    audio, video, recycled = negotiated
    # aiortc speaks opus but not RED, VP8/H264 with RTX, and neither twcc nor audio NACK
    assert [c.name for c in audio.codecs] == ["opus"] and audio.direction == "sendonly"
    assert audio.codecs[0].rtcp_feedback == []
    assert {e.uri for e in audio.header_extensions} == {EXT_MID, EXT_AUDIO_LEVEL}
    assert audio.extension_id(EXT_MID) == 4
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [
        ("VP8", 96, 97),
        ("H264", 102, 103),
    ]
    assert set(video.codecs[0].rtcp_feedback) == {
        ("nack", None),
        ("nack", "pli"),
        ("goog-remb", None),
    }
    assert video.extension_id(EXT_TWCC) is None
    assert video.encodings == [Encoding(ssrc=2222, rtx_ssrc=3333)]
    assert recycled.direction == "inactive"


def test_negotiated_subscriber_rejections_and_pt_remap() -> None:
    sections = subscriber_sections()
    offer_text = offer_subscriber(sections, transport=ferry_transport(), session_id=1, version=1)
    answer = parse(offer_text.replace("a=sendonly", "a=recvonly"), "answer")
    audio_ans, video_ans, recycled_ans = answer.media
    audio_ans.codecs = [c for c in audio_ans.codecs if c.name != "red"]
    video_ans.codecs = [copy.deepcopy(video_ans.codecs[0])]
    video_ans.codecs[0].payload_type = 120  # answerer's own number for VP8, without RTX
    video_ans.codecs[0].rtx_payload_type = None
    recycled_ans.rejected = True
    audio, video, recycled = negotiated_subscriber(sections, answer)
    assert [c.name for c in audio.codecs] == ["opus"] and audio.direction == "sendonly"
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [
        ("VP8", 120, None)
    ]
    assert recycled.rejected and recycled.direction == "inactive"
    assert (
        negotiated_subscriber(
            sections, parse(offer_text.replace("a=sendonly", "a=inactive"), "answer")
        )[0].direction
        == "inactive"
    )


# --------------------------------------------------------------------------- browser

CHROMIUM = Path("/usr/bin/chromium")

PUBLISH_JS = """async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.pubPc = pc;
  pc.addTransceiver('audio', {direction: 'sendonly'});
  pc.addTransceiver('video', {direction: 'sendonly', sendEncodings: [
    {rid: 'q', scaleResolutionDownBy: 4}, {rid: 'h', scaleResolutionDownBy: 2}, {rid: 'f'}]});
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  return offer.sdp;
}"""

SUBSCRIBE_JS = """async (sdp) => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.subPc = pc;
  const ids = [];
  pc.ontrack = (e) => ids.push(e.track.kind);
  await pc.setRemoteDescription({type: 'offer', sdp});
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  return {sdp: answer.sdp, kinds: ids};
}"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium")
async def test_chromium_accepts_answer_and_offer() -> None:
    """Chromium itself is the judge of whether Ferry's SDP is acceptable (no media flows)."""
    playwright = pytest.importorskip("playwright.async_api")
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            offer_text = await page.evaluate(PUBLISH_JS)
            offer = parse(offer_text, "offer")
            assert [e.rid for e in offer.media[1].encodings] == ["q", "h", "f"]
            answer_text, _ = answer_publisher(
                offer, transport=ferry_transport(candidates=False), start_bitrate_kbps=2500
            )
            await page.evaluate(
                "async (sdp) => { await window.pubPc.setRemoteDescription({type: 'answer', sdp}); }",
                answer_text,
            )
            state = await page.evaluate("() => window.pubPc.signalingState")
            assert state == "stable"
            rids = await page.evaluate(
                "() => window.pubPc.getTransceivers()[1].sender.getParameters().encodings.map(e => e.rid)"
            )
            assert rids == ["q", "h", "f"]

            sections = subscriber_sections()
            text = offer_subscriber(
                sections, transport=ferry_transport(candidates=False), session_id=9, version=1
            )
            result = await page.evaluate(SUBSCRIBE_JS, text)
            assert sorted(result["kinds"]) == ["audio", "video"]
            answer = parse(result["sdp"], "answer")
            assert answer.transport.setup == "active"
            audio, video, recycled = negotiated_subscriber(sections, answer)
            assert [c.name for c in audio.codecs] == ["opus", "red"]
            assert audio.extension_id(EXT_TWCC) == 3
            assert video.codecs[0].rtx_payload_type == 97
            assert video.codecs[0].has_feedback("transport-cc")
            assert recycled.direction == "inactive"

            # Re-offer: the camera goes away (inactive, same mid), a new track takes the
            # recycled section, another is appended. Chromium must accept the stable mids.
            sections[1].direction = "inactive"
            sections[2].direction = "sendonly"
            sections[2].encodings = [Encoding(ssrc=4444, rtx_ssrc=5555)]
            sections[2].msid = ("PA_bob", "TR_cam")
            sections.append(copy.deepcopy(sections[0]))
            sections[3].mid, sections[3].msid = "3", ("PA_bob", "TR_mic")
            sections[3].encodings = [Encoding(ssrc=6666)]
            text = offer_subscriber(
                sections, transport=ferry_transport(candidates=False), session_id=9, version=2
            )
            reoffer = await page.evaluate(
                """async (sdp) => {
                  const pc = window.subPc;
                  await pc.setRemoteDescription({type: 'offer', sdp});
                  const answer = await pc.createAnswer();
                  await pc.setLocalDescription(answer);
                  return answer.sdp;
                }""",
                text,
            )
            accepted = negotiated_subscriber(sections, parse(reoffer, "answer"))
            assert [m.direction for m in accepted] == [
                "sendonly",
                "inactive",
                "sendonly",
                "sendonly",
            ]

            # A data channel m-line is rejected and left out of BUNDLE; Chromium accepts that.
            offer_text = await page.evaluate(
                """async () => {
                  const pc = new RTCPeerConnection({iceServers: []});
                  window.dcPc = pc;
                  pc.addTransceiver('audio', {direction: 'sendonly'});
                  pc.createDataChannel('chat');
                  const offer = await pc.createOffer();
                  await pc.setLocalDescription(offer);
                  return offer.sdp;
                }"""
            )
            offer = parse(offer_text, "offer")
            assert offer.media[1].kind == "application" and offer.media[1].rejected
            answer_text, _ = answer_publisher(offer, transport=ferry_transport(candidates=False))
            assert "a=group:BUNDLE 0\r\n" in answer_text
            await page.evaluate(
                "async (sdp) => { await window.dcPc.setRemoteDescription({type: 'answer', sdp}); }",
                answer_text,
            )
        finally:
            await browser.close()
