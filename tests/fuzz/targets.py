"""One fuzz target per input surface, each driving Ferry's real code in memory.

A target owns some live state (a room with a connected publisher and viewer, an ICE
transport, a TURN relay), knows a corpus of valid inputs (`seeds`), turns a `Mutator`
into one input (`generate`), and feeds one input (`run`). `run` raises `Finding` when a
property fails (an `internal` error, an address bound by an unauthenticated check,
output of Ferry's own that does not parse); any other exception out of `run` is a
crash. State is rebuilt every `reset_every` inputs so memory stays flat and one input's
damage (a removed track, a closed session) does not mask the rest.

The CLI (`python -m tests.fuzz NAME --cases N`) and tests/test_fuzz.py run the same
`run`; only where inputs come from differs (seeded `random` vs hypothesis).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from aioice import stun

from media.rtp.twcc import TwccFeedback
from media.transport.srtp import SrtpError, SrtpReplayError
from media.wire.rtcp import (
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes_cname,
    build_sr,
)
from media.wire.rtp import (
    build_abs_send_time,
    build_audio_level,
    build_rtp,
    build_twcc_seq,
    parse_rtp,
)
from signaling import sdp
from signaling.sdp import build_subscriber_answer

from .harness import (
    CLIENT_CERT,
    PUBLISHER_ADDR,
    RIDS,
    VIEWER_ADDR,
    Call,
    Stack,
    binding_request,
    chromium_offer,
    lite_offer,
)
from .mutate import Mutator

EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"


class Finding(AssertionError):
    """A property of the target failed for this input (not an exception from Ferry)."""


class Target:
    name: ClassVar[str] = ""
    reset_every: ClassVar[int] = 1000

    def __init__(self) -> None:
        self.seeds: list[Any] = []
        self.reset()

    def reset(self) -> None:
        """Rebuild the live state and the seed corpus."""
        raise NotImplementedError

    def generate(self, m: Mutator) -> Any:
        raise NotImplementedError

    def run(self, inp: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `reset` acquired (event loops, sockets)."""


# ------------------------------------------------------------------------------- JSON


class JsonTarget(Target):
    """Signaling frames into `Session.receive` of a joined publisher and viewer.

    Seeds are valid requests of every type that name the room's real track sids and
    the pending offer version, so mutations reach the handlers, not only the validator.
    Input: (which connection: publisher, viewer, new, new after hello; frame).
    """

    name = "json"
    reset_every = 300

    def reset(self) -> None:
        self.call = call = Call()
        room = call.stack.rooms.rooms["fuzz"]
        tracks = list(room.router.tracks)
        offer = call.view_conn.last("subscriber_offer") or {"version": 1}
        answer = build_subscriber_answer(
            sdp.parse(offer["sdp"], "offer"), ufrag="view", pwd=call.viewer.pwd,
            fingerprint=("sha-256", CLIENT_CERT.fingerprint()), session_id=2,
        ) if "sdp" in offer else "v=0"
        token = call.stack.token("fuzz", "pub2")
        self.seeds = [
            {"type": "hello", "id": 1, "version": 1},
            {"type": "ping", "id": 2},
            {"type": "join", "id": 3, "token": token, "auto_subscribe": True},
            {"type": "publish", "id": 4, "sdp": lite_offer(), "tracks": {"cam": {"source": "camera", "name": "c"}}},
            {"type": "publish", "id": 5, "sdp": lite_offer(simulcast=False), "tracks": {}},
            {"type": "subscriber_answer", "id": 6, "sdp": answer, "version": offer["version"]},
            {"type": "trickle", "id": 7, "target": "publisher", "candidate": {"candidate": "a=candidate:1 1 udp 1 1.2.3.4 5 typ host"}},
            {"type": "subscribe", "id": 8, "track_sids": tracks},
            {"type": "unsubscribe", "id": 9, "track_sids": tracks[:1]},
            {"type": "mute", "id": 10, "track_sid": tracks[0], "muted": True},
            {"type": "update_subscription", "id": 11, "track_sid": tracks[-1], "max_layer": "h"},
            {"type": "update_subscription", "id": 12, "track_sid": tracks[-1], "width": 320, "height": 180},
            {"type": "update_subscription", "id": 13, "track_sid": tracks[-1], "enabled": False},
            {"type": "leave", "id": 14},
        ]

    def generate(self, m: Mutator) -> tuple[int, str | bytes]:
        rng = m.rng
        msg: Any = rng.choice(self.seeds)
        for _ in range(rng.randrange(4)):
            msg = m.json(msg)
        text = json.dumps(msg, allow_nan=True)
        if rng.random() < 0.15:
            raw = m.bytes(text.encode())
            return rng.randrange(4), raw if rng.random() < 0.5 else raw.decode("utf-8", "replace")
        return rng.randrange(4), text

    def run(self, inp: tuple[int, str | bytes]) -> None:
        which, frame = inp
        call = self.call
        fresh = which % 4 >= 2
        conn = (call.pub_conn, call.view_conn)[which % 2]
        if fresh:  # a new connection, unjoined; after a valid hello for 3
            conn = call.stack.session()
            if which % 4 == 3:
                conn.call("hello", version=1)
        before = call.stack.internal_errors, call.stack.bad_output
        replies = conn.raw(frame)
        if call.stack.internal_errors != before[0]:
            raise Finding(f"internal error: {replies}")
        if call.stack.bad_output != before[1]:
            raise Finding(f"a reply is not UTF-8 JSON text: {replies!r}")
        if not replies:
            raise Finding("no reply to a frame")
        if conn.session.participant is None and not fresh:
            self.reset()  # left or replaced: start again from a joined pair


# -------------------------------------------------------------------------------- SDP


class SdpTarget(Target):
    """Mutated real offers into the publish path of a joined, connected publisher.

    The viewer answers each subscriber offer the publish causes, so mutated tracks also
    go through subscriber negotiation and subscription. Ferry's answer and its
    subscriber offers must parse.
    """

    name = "sdp"
    reset_every = 200

    def reset(self) -> None:
        self.call = Call()
        self.seeds = [
            chromium_offer(),
            lite_offer(),
            lite_offer(simulcast=False),
            lite_offer(audio=False),
        ]

    def generate(self, m: Mutator) -> str:
        return m.lines(m.rng.choice(self.seeds), self.seeds)

    def run(self, inp: str) -> None:
        call = self.call
        stack = call.stack
        before = stack.internal_errors
        reply = call.pub_conn.call("publish", sdp=inp)
        if stack.internal_errors != before or not reply.get("ok") and reply["error"]["code"] == "internal":
            raise Finding(f"internal error: {reply}")
        if stack.bad_output:
            raise Finding(f"a reply is not UTF-8 JSON text: {reply!r}")
        if reply.get("ok"):
            try:
                sdp.parse(reply["sdp"], "answer")
            except sdp.SdpError as exc:
                raise Finding(f"Ferry's answer does not parse: {exc}") from None
        offer_msg = call.view_conn.last("subscriber_offer")
        if offer_msg is not None:
            call.view_conn.replies.clear()
            try:
                offer = sdp.parse(offer_msg["sdp"], "offer")
            except sdp.SdpError as exc:
                raise Finding(f"Ferry's subscriber offer does not parse: {exc}") from None
            answer = build_subscriber_answer(
                offer, ufrag="view", pwd=call.viewer.pwd,
                fingerprint=("sha-256", CLIENT_CERT.fingerprint()), session_id=2,
            )
            got = call.view_conn.call("subscriber_answer", sdp=answer, version=offer_msg["version"])
            if stack.internal_errors != before:
                raise Finding(f"internal error answering the subscriber offer: {got}")
        call.pub_conn.replies.clear()
        stack.engine.advance(20.0)
        stack.mux.sent.clear()


# ------------------------------------------------------------------------------- STUN

ATTACKERS = [("127.0.0.1", 45001), ("127.0.0.1", 45002), ("::1", 45003), PUBLISHER_ADDR]


class StunTarget(Target):
    """Datagrams into the media mux (STUN demux + ICE-lite) of a transport awaiting ICE.

    Property: whenever a datagram makes the mux bind its source address, it was a
    binding request with our ufrag pair and a valid MESSAGE-INTEGRITY (RFC 8445 7.3).
    Input: (source address index, datagram, re-sign with the right password).
    """

    name = "stun"
    reset_every = 500

    def reset(self) -> None:
        self.stack = stack = Stack()
        self.transport = stack.engine.create_transport(name="fuzz")
        self.transport.set_remote(CLIENT_CERT.fingerprints(), "brws")
        t = self.transport
        ufrag, pwd = t.ice_ufrag, t.ice_pwd
        tid = bytes(range(12))
        seeds = [
            binding_request(ufrag, "brws", pwd),
            binding_request(ufrag, "brws", pwd, use_candidate=False),
            binding_request(ufrag, "brws", "wrong-password-wrong-pwd"),
            binding_request(ufrag, "evil", pwd),
            binding_request("otherufr", "brws", pwd, tid=tid),
        ]
        for method, cls in ((stun.Method.BINDING, stun.Class.INDICATION),
                            (stun.Method.BINDING, stun.Class.RESPONSE),
                            (stun.Method.ALLOCATE, stun.Class.REQUEST),
                            (stun.Method.BINDING, stun.Class.ERROR)):
            msg = stun.Message(message_method=method, message_class=cls, transaction_id=tid)
            msg.attributes["USERNAME"] = f"{ufrag}:brws"
            msg.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 4000)
            msg.attributes["ERROR-CODE"] = (401, "x")
            msg.add_message_integrity(pwd.encode())
            seeds.append(bytes(msg))
        self.seeds = seeds

    def generate(self, m: Mutator) -> tuple[int, bytes, bool]:
        rng = m.rng
        return rng.randrange(len(ATTACKERS)), m.bytes(rng.choice(self.seeds), self.seeds), rng.random() < 0.3

    def _resign(self, data: bytes) -> bytes:
        """The mutated message with MESSAGE-INTEGRITY and FINGERPRINT made valid again."""
        try:
            msg = stun.parse_message(data)
        except Exception:
            return data
        msg.attributes.pop("MESSAGE-INTEGRITY", None)
        msg.attributes.pop("FINGERPRINT", None)
        try:
            msg.add_message_integrity(self.transport.ice_pwd.encode())
            return bytes(msg)
        except Exception:
            return data

    def run(self, inp: tuple[int, bytes, bool]) -> None:
        which, data, resign = inp
        if resign:
            data = self._resign(data)
        addr = ATTACKERS[which % len(ATTACKERS)]
        mux = self.stack.mux
        bound_before = set(mux._by_addr)
        mux.dispatch(data, addr, self.stack.engine.clock_ms)
        self.stack.engine.clock_ms += 10.0
        for reply, _ in mux.sent:
            try:
                stun.parse_message(reply)
            except Exception as exc:
                raise Finding(f"Ferry's STUN reply does not parse: {exc!r}") from None
        mux.sent.clear()
        if set(mux._by_addr) - bound_before and not self._authenticated(data):
            raise Finding(f"{addr} bound by an unauthenticated datagram")

    def _authenticated(self, data: bytes) -> bool:
        try:
            msg = stun.parse_message(data)
            return (
                msg.message_class == stun.Class.REQUEST
                and msg.message_method == stun.Method.BINDING
                and msg.attributes.get("USERNAME") == f"{self.transport.ice_ufrag}:brws"
                and msg.check_message_integrity(self.transport.ice_pwd.encode())
            )
        except Exception:
            return False


# ------------------------------------------------------------------------ RTP and RTCP


class _MediaTarget(Target):
    """Shared by RTP and RTCP: a live call, and checks on what Ferry sends the viewer."""

    reset_every = 3000

    def reset(self) -> None:
        self.call = Call()
        self.seq = 1000
        self.consent_ms = self.call.stack.engine.clock_ms
        self._prime()
        self.seeds = self._seeds()

    def _prime(self) -> None:
        """A few real packets first, so forwarding state (layers, caches) exists."""
        for pkt in self._rtp_seeds():
            self.call.pub_transport.listener.on_rtp(pkt, self.call.stack.engine.clock_ms)  # type: ignore[union-attr]
        self._drain()

    def _seeds(self) -> list[bytes]:
        raise NotImplementedError

    def _rtp_seeds(self) -> list[bytes]:
        ids = self.call.ext_ids
        now = self.call.stack.engine.clock_ms
        out = []
        base = [(ids[EXT_MID], b"1"), (ids[EXT_ABS_SEND_TIME], build_abs_send_time(now)),
                (ids[EXT_TWCC], build_twcc_seq(self.seq))]
        for i, rid in enumerate(RIDS):
            for start, key in ((True, True), (False, False), (True, False)):
                descriptor = bytes([0x90 if start else 0x80, 0x80, 0x80 | (i * 7), 0x11])
                frame = (b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01" if key else b"\x11\x22\x33") + bytes(30)
                out.append(build_rtp(payload_type=96, seq=self.seq + i, timestamp=90000 + i, ssrc=0x2221 + 16 * i,
                                     payload=descriptor + frame, marker=not start,
                                     extensions=base + [(ids[EXT_RID], rid.encode())]))
            rtx_payload = struct.pack("!H", self.seq + i) + descriptor + frame
            out.append(build_rtp(payload_type=97, seq=7 + i, timestamp=90000, ssrc=0x2222 + 16 * i,
                                 payload=rtx_payload, extensions=base + [(ids[EXT_RRID], rid.encode())]))
        audio_ext = [(ids[EXT_MID], b"0"), (ids[EXT_AUDIO_LEVEL], build_audio_level(True, 30)),
                     (ids[EXT_TWCC], build_twcc_seq(self.seq + 5))]
        out.append(build_rtp(payload_type=111, seq=self.seq, timestamp=960, ssrc=0x1111,
                             payload=b"\xfc" + bytes(60), extensions=audio_ext))
        out.append(build_rtp(payload_type=63, seq=self.seq + 1, timestamp=1920, ssrc=0x1111,
                             payload=bytes([0xEF, 0x03, 0xC0, 0x05, 111]) + bytes(5) + b"\xfc" + bytes(20),
                             extensions=audio_ext))
        out.append(build_rtp(payload_type=96, seq=1, timestamp=2, ssrc=0x2221, payload=b"\x90\x80\x80\x01",
                             csrcs=[1, 2], extensions=[(200, b"two-byte")]))
        return out

    def _drain(self) -> None:
        """What Ferry sent the viewer must decrypt and parse as RTP or RTCP."""
        mux = self.call.stack.mux
        viewer = self.call.viewer.srtp
        assert viewer is not None
        for data, addr in mux.sent:
            if addr != VIEWER_ADDR or not 127 < data[0] < 192:
                continue
            try:
                if 191 < data[1] < 224:
                    viewer.unprotect_rtcp(data)
                else:
                    plain = viewer.unprotect(data)
                    parse_rtp(plain)
            except SrtpReplayError:
                continue  # a retransmission the viewer already has
            except (SrtpError, ValueError) as exc:
                raise Finding(f"Ferry sent the viewer a packet it cannot read: {exc}") from None
        mux.sent.clear()

    def _step(self, advance_ms: float) -> None:
        call = self.call
        engine = call.stack.engine
        engine.advance(advance_ms)
        if engine.clock_ms - self.consent_ms > 2000.0:
            self.consent_ms = engine.clock_ms
            call.publisher.consent(call.pub_transport, engine.clock_ms)
            call.viewer.consent(call.sub_transport, engine.clock_ms)
        self._drain()


class RtpTarget(_MediaTarget):
    """RTP from the publisher into the transport's receive path after SRTP.

    Input: (plain RTP, through SRTP and the mux or straight after decryption, ms to
    advance, give it the next seq/timestamp?). Forwarded packets must reach the viewer
    as valid SRTP.
    """

    name = "rtp"

    def _seeds(self) -> list[bytes]:
        return self._rtp_seeds()

    def generate(self, m: Mutator) -> tuple[bytes, bool, int, bool]:
        rng = m.rng
        return (m.bytes(rng.choice(self.seeds), self.seeds), rng.random() < 0.1, rng.randrange(30),
                rng.random() < 0.7)

    def run(self, inp: tuple[bytes, bool, int, bool]) -> None:
        data, via_srtp, advance, renumber = inp
        call = self.call
        now = call.stack.engine.clock_ms
        if renumber and len(data) >= 8:
            # A fresh sequence number and timestamp, so the packet is not a duplicate
            # of its seed and gets past the publisher's dedupe into forwarding.
            self.seq = (self.seq + 1) & 0xFFFF
            data = data[:2] + struct.pack("!HI", self.seq, self.seq * 3000) + data[8:]
        if via_srtp:
            srtp = call.publisher.srtp
            assert srtp is not None
            try:
                protected = srtp.protect(data)
            except SrtpError:
                protected = data
            call.stack.mux.dispatch(protected, PUBLISHER_ADDR, now)
        else:
            listener = call.pub_transport.listener
            assert listener is not None
            listener.on_rtp(data, now)
        self._step(float(advance))


class RtcpTarget(_MediaTarget):
    """RTCP from the publisher and from the viewer, after SRTP.

    Seeds name the real SSRCs both ways (the publisher's layers, the viewer's down
    tracks): SR, RR, SDES, BYE, NACK, PLI, FIR, REMB, transport-wide feedback.
    Input: (compound RTCP, from the viewer?, through SRTP?, ms to advance, make the
    length field span the datagram?).
    """

    name = "rtcp"

    def _seeds(self) -> list[bytes]:
        down = self.call.down_ssrcs or [1]
        up = [0x1111, 0x2221, 0x2231, 0x2241]
        info = _receiver_info
        out = [
            build_sr(0x2221, 0x83AA7E80_00000000, 90000, 10, 1000, [info(down[0])]),
            build_rr(0x5555, [info(s) for s in down + up]),
            build_sdes_cname(0x2221, "fuzzcname"),
            build_bye(down[:2] + up[:1]),
            build_nack(0x5555, down[-1], [self.seq, self.seq + 1, self.seq + 20]),
            build_pli(0x5555, down[-1]),
            build_fir(0x5555, down[-1], 3),
            build_remb(0x5555, 300_000, down),
            bytes(TwccFeedback(0x5555, down[0], 1, 100, 0, [(1, 6_400_000), (2, None), (3, 6_401_000)])),
        ]
        out.append(out[1] + out[4] + out[5])  # compound
        out.append(out[0] + out[2])
        return out

    def generate(self, m: Mutator) -> tuple[bytes, bool, bool, int, bool]:
        rng = m.rng
        return (m.bytes(rng.choice(self.seeds), self.seeds), rng.random() < 0.6, rng.random() < 0.1,
                rng.randrange(30), rng.random() < 0.5)

    def run(self, inp: tuple[bytes, bool, bool, int, bool]) -> None:
        data, from_viewer, via_srtp, advance, reframe = inp
        if reframe and len(data) >= 8 and len(data) % 4 == 0:
            # One packet spanning the whole datagram: the length field made to agree,
            # so the mutation reaches the packet's parser rather than the framing check.
            data = data[:2] + struct.pack("!H", len(data) // 4 - 1) + data[4:]
        call = self.call
        now = call.stack.engine.clock_ms
        transport, peer, addr = (
            (call.sub_transport, call.viewer, VIEWER_ADDR) if from_viewer
            else (call.pub_transport, call.publisher, PUBLISHER_ADDR)
        )
        if via_srtp:
            assert peer.srtp is not None
            try:
                protected = peer.srtp.protect_rtcp(data)
            except SrtpError:
                protected = data
            call.stack.mux.dispatch(protected, addr, now)
        else:
            listener = transport.listener
            assert listener is not None
            listener.on_rtcp(data, now)
        # Keep media flowing, so feedback has packets to act on (NACKs to answer).
        self.seq = (self.seq + 1) & 0xFFFF
        listener = call.pub_transport.listener
        assert listener is not None
        listener.on_rtp(self._next_audio(), now)
        self._step(float(advance))

    def _next_audio(self) -> bytes:
        ids = self.call.ext_ids
        return build_rtp(payload_type=111, seq=self.seq, timestamp=self.seq * 960, ssrc=0x1111,
                         payload=b"\xfc" + bytes(40),
                         extensions=[(ids[EXT_MID], b"0"), (ids[EXT_TWCC], build_twcc_seq(self.seq))])


def _receiver_info(ssrc: int) -> Any:
    from aiortc.rtp import RtcpReceiverInfo

    return RtcpReceiverInfo(ssrc=ssrc, fraction_lost=10, packets_lost=3, highest_sequence=1000,
                            jitter=20, lsr=0x7E800000, dlsr=100)


# ------------------------------------------------------------------------------- TURN


@dataclass
class _FakeDatagramTransport:
    sent: list[tuple[bytes, Any]]

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if len(self.sent) < 1000:
            self.sent.append((data, addr))

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 3478) if name == "sockname" else default


TURN_CLIENTS = [("127.0.0.1", 46001), ("127.0.0.1", 46002), ("10.0.0.9", 46003)]
TURN_USER, TURN_PASSWORD = "alice", "ferry"


class TurnTarget(Target):
    """Datagrams into the netem TURN relay's client side (`TurnRelay._on_client`).

    One client already holds an allocation with a permission and a channel, so
    Refresh/CreatePermission/ChannelBind/Send/ChannelData reach their handlers. A third
    of the inputs are re-signed with the right long-term key after mutation, to get
    past authentication. Exceptions the relay catches itself and answers with 400 are
    counted in `swallowed` (reported, not crashes); anything escaping `_on_client` or a
    timer callback is a crash.
    """

    name = "turn"
    reset_every = 2000

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.swallowed: dict[str, int] = {}
        self._loop_errors: list[str] = []
        super().__init__()

    def reset(self) -> None:
        from netem.turn import TurnRelay

        self.close()
        self.loop = loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, ctx: self._loop_errors.append(str(ctx.get("exception") or ctx)))
        target = self

        class Relay(TurnRelay):
            def _count(self, what: str, detail: str = "") -> None:
                kind = detail.split("(", 1)[0]
                if what == "bad_message" and kind.endswith(("Error", "Exception")):
                    target.swallowed[kind] = target.swallowed.get(kind, 0) + 1
                super()._count(what, detail)

        self.sent: list[tuple[bytes, Any]] = []
        self.relay = relay = Relay("127.0.0.1", 0, password=TURN_PASSWORD, max_allocations=8)
        if hasattr(relay, "set_allowed_peers"):  # relaying only to listed peers
            relay.set_allowed_peers(["127.0.0.1"])
        relay._transport = _FakeDatagramTransport(self.sent)  # type: ignore[assignment]
        self.key = hashlib.md5(f"{TURN_USER}:{relay.realm}:{TURN_PASSWORD}".encode()).digest()
        client = TURN_CLIENTS[0]
        allocate = self._signed(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24, "LIFETIME": 600})
        loop.run_until_complete(self._feed(allocate, client, settle=True))
        if client not in relay._allocs:
            raise RuntimeError(f"no allocation: {self.sent}")
        peer = ("127.0.0.1", 47000)
        loop.run_until_complete(self._feed(self._signed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer}), client))
        loop.run_until_complete(self._feed(
            self._signed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": peer}), client))
        send = stun.Message(stun.Method.SEND, stun.Class.INDICATION)
        send.attributes["XOR-PEER-ADDRESS"] = peer
        send.attributes["DATA"] = b"hello peer"
        self.seeds = [
            allocate,
            self._signed(stun.Method.REFRESH, {"LIFETIME": 600}),
            self._signed(stun.Method.REFRESH, {"LIFETIME": 0}),
            self._signed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": ("127.0.0.2", 1)}),
            self._signed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4002, "XOR-PEER-ADDRESS": ("127.0.0.1", 47001)}),
            bytes(send),
            struct.pack("!HH", 0x4001, 8) + b"channel!",
            bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)),
            bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)),
        ]
        self.sent.clear()
        self._loop_errors.clear()

    def _signed(self, method: stun.Method, attrs: dict[str, Any]) -> bytes:
        msg = stun.Message(method, stun.Class.REQUEST)
        msg.attributes.update(attrs)
        msg.attributes["USERNAME"] = TURN_USER
        msg.attributes["REALM"] = self.relay.realm
        msg.attributes["NONCE"] = self.relay.nonce
        msg.add_message_integrity(self.key)
        return bytes(msg)

    async def _feed(self, data: bytes, addr: Any, *, settle: bool = False) -> None:
        self.relay._on_client(data, addr)
        await asyncio.sleep(0)
        if settle:
            for _ in range(20):
                if not self.relay._pending:
                    break
                await asyncio.sleep(0.01)

    def generate(self, m: Mutator) -> tuple[int, bytes, bool]:
        rng = m.rng
        return rng.randrange(len(TURN_CLIENTS)), m.bytes(rng.choice(self.seeds), self.seeds), rng.random() < 0.33

    def _resign(self, data: bytes) -> bytes:
        try:
            msg = stun.parse_message(data)
            if "MESSAGE-INTEGRITY" not in msg.attributes:
                return data
            username = msg.attributes.get("USERNAME")
            if not isinstance(username, str):
                return data
            key = hashlib.md5(f"{username}:{self.relay.realm}:{TURN_PASSWORD}".encode()).digest()
            msg.attributes.pop("MESSAGE-INTEGRITY", None)
            msg.attributes.pop("FINGERPRINT", None)
            msg.attributes["NONCE"] = self.relay.nonce
            msg.add_message_integrity(key)
            return bytes(msg)
        except Exception:
            return data

    def run(self, inp: tuple[int, bytes, bool]) -> None:
        which, data, resign = inp
        if resign:
            data = self._resign(data)
        assert self.loop is not None
        self.loop.run_until_complete(self._feed(data, TURN_CLIENTS[which % len(TURN_CLIENTS)]))
        self.sent.clear()
        if self._loop_errors:
            errors, self._loop_errors = self._loop_errors, []
            raise Finding(f"error in a relay callback: {errors[0]}")

    def close(self) -> None:
        loop = self.loop
        if loop is None:
            return
        self.loop = None
        relay = getattr(self, "relay", None)
        if relay is not None:
            relay._transport = None
            loop.run_until_complete(relay.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (JsonTarget, SdpTarget, StunTarget, RtpTarget, RtcpTarget, TurnTarget)
}


def make(name: str, seed: int = 1) -> Target:
    """A fresh target; `seed` fixes the random parts of its state (SSRCs, ids)."""
    random.seed(seed)
    return TARGETS[name]()
