"""In-memory Ferry for fuzzing and transport tests: real cores, no sockets, virtual time.

`Stack` is a signaling server without HTTP: an `Engine` whose UDP mux records what it
would send, a `RoomManager`, and `Session`s fed frames directly. `ClientPeer` is the
browser side of one transport (ICE check + DTLS client + SRTP), driven through
`UdpMux.dispatch` exactly as datagrams from the socket would be. Media time only moves
in `VirtualEngine.advance`, so timers (NACK, pacer, feedback, consent) fire where the
caller says, not where the machine's load puts them.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioice import stun

from media.engine import Engine, EngineConfig
from media.transport.certificate import Certificate
from media.transport.dtls import DtlsSession
from media.transport.srtp import SrtpContext
from media.transport.udp_mux import Addr, UdpMux
from media.transport.webrtc_transport import WebRtcTransport
from signaling import sdp
from signaling.auth import TokenVerifier, mint_token
from signaling.protocol import encode
from signaling.rooms import RoomManager
from signaling.sdp import build_publisher_offer, build_subscriber_answer
from signaling.session import Session

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
API_KEY, API_SECRET = "fuzzkey", "fuzzsecret-fuzzsecret-fuzzsecret-32"
CLIENT_CERT = Certificate.generate()  # key generation is the slow part: one per process
SERVER_CERT = Certificate.generate()
PUBLISHER_ADDR: Addr = ("127.0.0.1", 40000)
VIEWER_ADDR: Addr = ("127.0.0.1", 40002)
RIDS = ("q", "h", "f")


class RecordingMux(UdpMux):
    """A mux that never opens its socket: `sendto` keeps the datagrams instead."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__("127.0.0.1", 0)
        self.port = 7882
        self.sent: list[tuple[bytes, Addr]] = []
        self._clock = clock

    def sendto(self, data: bytes, addr: Addr) -> None:
        self.packets_out += 1
        self.bytes_out += len(data)
        if len(self.sent) < 10000:
            self.sent.append((data, addr))

    def now_ms(self) -> float:
        return self._clock()

    def take(self, addr: Addr | None = None) -> list[bytes]:
        """Datagrams sent (to `addr`, or to anyone) since the last take."""
        out = [d for d, a in self.sent if addr is None or a == addr]
        self.sent = [(d, a) for d, a in self.sent if addr is not None and a != addr]
        return out


class VirtualEngine(Engine):
    """The media engine on a virtual clock: timers fire only in `advance`."""

    def __init__(self) -> None:
        super().__init__(EngineConfig(port=0))
        self.clock_ms = 1_000_000.0
        self.mux = RecordingMux(lambda: self.clock_ms)
        self.certificate = SERVER_CERT
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def now_ms(self) -> float:
        return self.clock_ms

    def call_at(self, when_ms: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(callback)
        heapq.heappush(self._timers, (when_ms, next(self._order), handle))
        return handle

    def advance(self, ms: float) -> None:
        """Move the clock, firing due timers and the routers' ticks on the way."""
        end = self.clock_ms + ms
        while self._timers and self._timers[0][0] <= end:
            when, _, handle = heapq.heappop(self._timers)
            self.clock_ms = max(self.clock_ms, when)
            handle()
        self.clock_ms = end
        for router in list(self.routers.values()):
            router.on_timer(end)


class _Handle:
    """What `call_at` returns (the pacer only ever cancels it)."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None

    def __call__(self) -> None:
        callback = self.callback
        if callback is not None and not self.cancelled:
            self.callback = None
            callback()


def binding_request(
    local_ufrag: str, remote_ufrag: str, pwd: str, *, use_candidate: bool = True, tid: bytes | None = None
) -> bytes:
    """A browser's ICE connectivity check, signed with `pwd`."""
    msg = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        **({"transaction_id": tid} if tid is not None else {}),
    )
    msg.attributes["USERNAME"] = f"{local_ufrag}:{remote_ufrag}"
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLING"] = 0x1234567890ABCDEF
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    return bytes(msg)


class ClientPeer:
    """The browser end of one Ferry transport: ICE checks, DTLS client, SRTP."""

    def __init__(self, mux: RecordingMux, addr: Addr, *, ufrag: str = "brws") -> None:
        self.mux = mux
        self.addr = addr
        self.ufrag = ufrag
        self.pwd = "browserpasswordbrowserpw"
        self.dtls = DtlsSession(CLIENT_CERT, role="client", remote_fingerprints=SERVER_CERT.fingerprints())
        self.srtp: SrtpContext | None = None

    def consent(self, transport: WebRtcTransport, now_ms: float) -> None:
        """A consent-freshness check (RFC 7675), as browsers send every few seconds."""
        self.mux.dispatch(binding_request(transport.ice_ufrag, self.ufrag, transport.ice_pwd), self.addr, now_ms)

    def connect(self, transport: WebRtcTransport, now_ms: float) -> None:
        """ICE check with USE-CANDIDATE, then the DTLS handshake, all through the mux."""
        self.mux.dispatch(binding_request(transport.ice_ufrag, self.ufrag, transport.ice_pwd), self.addr, now_ms)
        self.mux.take(self.addr)
        self.dtls.start(now_ms)
        for _ in range(50):
            moved = False
            for datagram in self.dtls.datagrams_to_send():
                moved = True
                self.mux.dispatch(datagram, self.addr, now_ms)
            for datagram in self.mux.take(self.addr):
                if 19 < datagram[0] < 64:
                    moved = True
                    self.dtls.feed(datagram, now_ms)
            if not moved:
                break
        if self.dtls.state != "connected" or transport.state != "connected":
            raise RuntimeError(f"client {self.dtls.state}, transport {transport.state}")
        self.srtp = SrtpContext(*self.dtls.srtp_keys())


class Stack:
    """Signaling + engine without sockets; `session()` makes a connection's Session."""

    def __init__(self) -> None:
        self.engine = VirtualEngine()
        self.mux: RecordingMux = self.engine.mux
        self.rooms = RoomManager(self.engine, empty_timeout_s=20.0, reconnect_grace_s=15.0)
        self.verifier = TokenVerifier({API_KEY: API_SECRET})
        self.internal_errors = 0
        self.bad_output = 0  # replies that could not be sent as UTF-8 JSON text
        self._wall0 = time.time() - self.engine.clock_ms / 1000.0

    def now(self) -> float:
        """Signaling time (wall clock seconds, for token expiry) on the virtual clock."""
        return self._wall0 + self.engine.clock_ms / 1000.0

    def token(self, room: str, identity: str, **grants: Any) -> str:
        return mint_token(API_KEY, API_SECRET, identity=identity, room=room, now=time.time(), ttl_s=10 * 86400,
                          **grants)

    def session(self) -> Conn:
        return Conn(self)


class Conn:
    """One signaling connection: a Session and every message it sent back."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.replies: list[dict] = []
        self.closed = False
        self.session = Session(stack.rooms, stack.verifier, self._send, close=self._close)
        self._ids = itertools.count(1)

    def _send(self, message: dict) -> None:
        # What the WebSocket writer sends: UTF-8 text of strict JSON (no NaN, which
        # browsers' JSON.parse refuses). Counted, not raised: this runs inside Ferry.
        try:
            encode(message).encode("utf-8")
            json.dumps(message, allow_nan=False)
        except (ValueError, TypeError):
            self.stack.bad_output += 1
        error = message.get("error")
        if isinstance(error, dict) and error.get("code") == "internal":
            self.stack.internal_errors += 1
        if len(self.replies) < 1000:
            self.replies.append(message)

    def _close(self) -> None:
        self.closed = True

    def raw(self, frame: str | bytes) -> list[dict]:
        """Feed one frame; returns what was sent back meanwhile."""
        start = len(self.replies)
        self.session.receive(frame, self.stack.now())
        return self.replies[start:]

    def call(self, type_: str, **fields: Any) -> dict:
        """A request; returns its reply (the message echoing its id)."""
        id_ = next(self._ids)
        for message in self.raw(json.dumps({"type": type_, "id": id_, **fields})):
            if message.get("id") == id_:
                return message
        raise AssertionError(f"no reply to {type_}")

    def join(self, room: str, identity: str, **grants: Any) -> dict:
        assert self.call("hello", version=1)["ok"]
        reply = self.call("join", token=self.stack.token(room, identity, **grants))
        assert reply["ok"], reply
        return reply

    def last(self, type_: str) -> dict | None:
        return next((m for m in reversed(self.replies) if m.get("type") == type_), None)


def chromium_offer() -> str:
    return (FIXTURES / "chromium156-simulcast-offer.sdp").read_text()


def lite_offer(*, simulcast: bool = True, audio: bool = True, ufrag: str = "brws", pwd: str = "browserpasswordbrowserpw") -> str:
    """A Chrome-shaped publisher offer whose fingerprint is `CLIENT_CERT`'s."""
    return build_publisher_offer(
        ufrag=ufrag,
        pwd=pwd,
        fingerprint=("sha-256", CLIENT_CERT.fingerprint()),
        port=PUBLISHER_ADDR[1],
        audio_ssrc=0x1111 if audio else None,
        video_ssrcs=[(0x2221, 0x2222), (0x2231, 0x2232), (0x2241, 0x2242)],
        rids=list(RIDS) if simulcast else None,
        stream_id="stream",
        audio_track_id="mic",
        video_track_id="cam",
        cname="fuzzcname",
        session_id=1,
    )


class Call:
    """A room with a connected publisher (opus + 3-layer VP8) and a connected viewer.

    What the RTP and RTCP targets feed: `publisher` and `viewer` are the client ends,
    `pub_transport`/`sub_transport` Ferry's, `down_ssrcs` what Ferry sends the viewer.
    """

    def __init__(self, room: str = "fuzz") -> None:
        self.stack = stack = Stack()
        self.pub_conn = stack.session()
        self.pub_conn.join(room, "pub")
        reply = self.pub_conn.call("publish", sdp=lite_offer())
        assert reply["ok"], reply
        self.answer = sdp.parse(reply["sdp"], "answer")
        participants = stack.rooms.rooms[room].participants
        pub = next(p for p in participants.values() if p.identity == "pub")
        self.pub_transport = pub.media.publisher.transport
        self.publisher = ClientPeer(stack.mux, PUBLISHER_ADDR)
        self.publisher.connect(self.pub_transport, stack.engine.clock_ms)

        self.view_conn = stack.session()
        self.view_conn.join(room, "view")
        offer_msg = self.view_conn.last("subscriber_offer")
        assert offer_msg is not None
        offer = sdp.parse(offer_msg["sdp"], "offer")
        self.viewer = ClientPeer(stack.mux, VIEWER_ADDR, ufrag="view")
        answer = build_subscriber_answer(
            offer, ufrag="view", pwd=self.viewer.pwd, fingerprint=("sha-256", CLIENT_CERT.fingerprint()), session_id=2
        )
        reply = self.view_conn.call("subscriber_answer", sdp=answer, version=offer_msg["version"])
        assert reply["ok"], reply
        view = next(p for p in participants.values() if p.identity == "view")
        self.sub_transport = view.media.subscriber.transport
        self.viewer.connect(self.sub_transport, stack.engine.clock_ms)
        self.down_ssrcs = [e.ssrc for m in offer.media for e in m.encodings if e.ssrc is not None]
        self.down_ssrcs += [e.rtx_ssrc for m in offer.media for e in m.encodings if e.rtx_ssrc is not None]
        self.ext_ids = {e.uri: e.id for m in self.answer.media for e in m.header_extensions}
        self.mids = {m.kind: m.mid for m in self.answer.media if not m.rejected}
