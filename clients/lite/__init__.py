"""A *lite* WebRTC endpoint on Ferry's own sans-I/O cores, for load and scenario tests.

Why it exists: aiortc costs ~50-100 µs per packet per peer in Python, so it cannot play
50 subscribers in a benchmark or 20 students in a netem classroom, and it cannot send
simulcast at all. ``LiteClient`` speaks the same signaling as :class:`FerryClient`
(``hello``, ``join``, ``publish``, ``subscriber_offer``/``subscriber_answer``) but its
media stack is Ferry's own: ICE (a controlling full agent toward Ferry's ICE-lite),
:class:`DtlsSession` as DTLS client, :class:`SrtpContext`, and the RTP/RTCP wire helpers.

Modules: ``transport`` (socket, ICE, DTLS, SRTP), ``publisher``, ``subscriber``,
``clips`` (pre-encoded media), ``live`` (a stamped pattern encoded live), ``client`` (the participant); SDP comes from
``signaling.sdp`` (``build_publisher_offer``, ``build_subscriber_answer``).

What it does not do: decode, jitter-buffer or congestion-control. A publisher paces
pre-encoded frames (:func:`encode_vp8_clip`, :func:`encode_opus_clip`) in real time
(or video encoded live with a capture-time stamp, :class:`LiveVp8Source`),
with simulcast (rid q/h/f, no ``a=ssrc`` lines, like Chrome), RTX answering NACKs and
keyframes on PLI; a subscriber counts what arrives per SSRC (packets, bytes, loss,
VP8 keyframes) and sends NACK, receiver reports and transport-wide CC feedback.

Typical use::

    client = LiteClient()
    await client.connect(server.ws_url)
    await client.join(server.token("room", "alice"))
    video = [encode_vp8_clip(w, h, 60, br) for w, h, br in LAYERS]
    await client.publish_vp8(video, audio=encode_opus_clip(2.0))
    ...
    print(client.stats())
    await client.close()

Every wait is bounded; every error on the media path is counted and logged once.
``LiteClient(candidate_rewrite=...)`` sends to another address than Ferry's candidate
(a proxy that impairs the link, say).
"""

from .client import LiteClient
from .clips import encode_opus_clip, encode_vp8_clip, is_descriptor_keyframe, is_vp8_keyframe
from .live import LiveVp8Source
from .publisher import LitePublisher
from .subscriber import LiteSubscriber, RecvCounters
from .transport import Addr, CandidateRewrite, LiteTransport

__all__ = [
    "Addr",
    "CandidateRewrite",
    "LiteClient",
    "LitePublisher",
    "LiteSubscriber",
    "LiteTransport",
    "LiveVp8Source",
    "RecvCounters",
    "encode_opus_clip",
    "encode_vp8_clip",
    "is_descriptor_keyframe",
    "is_vp8_keyframe",
]
