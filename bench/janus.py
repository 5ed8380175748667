"""Janus (Debian's, VideoRoom) as the reference SFU for bench/forward.py ``--compare janus``.

Why: a µs-per-packet figure means little without another SFU measured the same way,
with the same publisher clip and the same receivers on the same machine. Janus is
what the issue names; this module runs a private one and drives it through its HTTP
API, so ``forward.py`` can alternate Ferry and Janus round by round.

* :class:`JanusProcess` writes a config dir to a temp dir (``janus.jcfg`` with one
  static event loop; only the VideoRoom plugin and the HTTP transport, symlinked into
  private plugin/transport folders so nothing else loads; no event handlers or
  loggers; the HTTP API on a free 127.0.0.1 port; ICE on one IPv4 address, no IPv6,
  no mDNS) and starts ``janus`` on it.
* :class:`JanusApi` is a small asyncio client of the Janus HTTP API: one session, one
  long-poll task routing events to handles by ``sender``, plugin messages with JSEP.
* :class:`JanusPublisher` / :class:`JanusSubscriber` put the lite client's transports
  (``clients.lite``) behind VideoRoom: the publisher offers, each subscriber answers
  Janus's offer and sends ``start``.

Three things the lite transports need toward Janus that Ferry never asks of them:

1. An address Janus can reach. Janus never gathers on loopback interfaces (with
   ``ice_enforce_list = "lo"`` it adds no address and libnice falls back to every
   other interface), and libnice pins each socket to its interface with
   ``IP_UNICAST_IF``, so whatever Janus sends to 127.0.0.1 leaves through eth0 and is
   lost: the lite client never saw a single STUN response. Janus and its clients
   therefore meet on the host's own IPv4 address (:func:`media_host`), which the
   kernel delivers through ``lo`` like 127.0.0.1: nothing leaves the machine.
2. Answers to connectivity checks. Ferry is ICE-lite, so the lite client only sends
   checks and drops every STUN request; Janus's libnice is a full agent, which marks
   a pair valid only when its *own* check on it is answered. :class:`IceFullMixin`
   answers binding requests (short-term credentials, XOR-MAPPED-ADDRESS) and takes
   the role the offer/answer gives: Janus offers to subscribers, so it controls
   there, and a subscriber's checks carry ICE-CONTROLLED without USE-CANDIDATE.
3. The DTLS role from the SDP: Janus answers a publisher's ``actpass`` with
   ``active``, so the publisher is the DTLS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import random
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aioice import stun

from bench.child import stop_child, wait_healthy
from bench.forward_rx import RawSubscriber
from clients.lite.publisher import AudioStream, LitePublisher, VideoLayer
from clients.lite.subscriber import LiteSubscriber
from clients.lite.transport import _PRIORITY, LiteTransport
from media.ortc import TransportParameters
from media.transport.dtls import DtlsSession
from signaling import sdp
from signaling.sdp import build_publisher_offer, build_subscriber_answer, first_udp_candidate

__all__ = [
    "JANUS_BINARY",
    "IceFullMixin",
    "JanusApi",
    "JanusError",
    "JanusProcess",
    "JanusPublisher",
    "JanusRawSubscriber",
    "JanusLiteSubscriber",
    "JanusSubscriber",
    "janus_available",
    "media_host",
]

JANUS_BINARY = "/usr/bin/janus"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/aarch64-linux-gnu/janus", "/usr/lib/janus")
STUN_BINDING_REQUEST = b"\x00\x01"


class JanusError(RuntimeError):
    """Janus answered with an error, or did not answer in time."""


def janus_available() -> str | None:
    """None if Janus can run here, otherwise why not."""
    if not os.access(JANUS_BINARY, os.X_OK):
        return f"{JANUS_BINARY} not found (Debian package 'janus')"
    if _lib_dir() is None:
        return f"Janus plugin folders not found under {', '.join(LIB_DIRS)}"
    return None


def _lib_dir() -> Path | None:
    for d in LIB_DIRS:
        p = Path(d)
        if (p / "plugins" / "libjanus_videoroom.so").exists() and (
            p / "transports" / "libjanus_http.so"
        ).exists():
            return p
    return None


def media_host() -> str:
    """The host's first non-loopback IPv4 address: where Janus and its clients meet.

    Not 127.0.0.1: Janus skips loopback interfaces when gathering, and libnice pins
    each socket to its interface (``IP_UNICAST_IF``), so a packet from Janus to
    127.0.0.1 leaves through eth0 and is lost. Between two sockets on the host's own
    address the kernel still delivers through ``lo``: nothing leaves the machine.
    """
    global _media_host
    if _media_host is None:
        for _index, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue  # no IPv4 address, or down
            ip = socket.inet_ntoa(packed[20:24])
            if not ip.startswith("127."):
                _media_host = ip
                break
        else:
            raise JanusError("no non-loopback IPv4 address for Janus's ICE candidates")
    return _media_host


_media_host: str | None = None
SIOCGIFADDR = 0x8915


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ process


class JanusProcess:
    """A private Janus: its own config dir, VideoRoom + HTTP only, media on loopback."""

    def __init__(
        self,
        *,
        event_loops: int = 1,
        ice_lite: bool = False,
        debug_level: int = 3,
        nice_debug: bool = False,
        log_path: str | None = None,
    ) -> None:
        self.host = media_host()
        self.event_loops = event_loops
        self.ice_lite = ice_lite
        self.debug_level = debug_level
        self.nice_debug = nice_debug
        self.http_port = _free_tcp_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-janus-"))
        self.log_path = log_path or str(self.dir / "janus.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/janus"

    def write_config(self) -> None:
        lib = _lib_dir()
        if lib is None:
            raise JanusError("Janus plugin folders not found")
        for sub, name in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
            (self.dir / sub).mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):
                (self.dir / sub / name).symlink_to(lib / sub / name)
        for sub in ("events", "loggers"):
            (self.dir / sub).mkdir(exist_ok=True)
        (self.dir / "janus.jcfg").write_text(
            f"""general: {{
	configs_folder = "{self.dir}"
	plugins_folder = "{self.dir}/plugins"
	transports_folder = "{self.dir}/transports"
	events_folder = "{self.dir}/events"
	loggers_folder = "{self.dir}/loggers"
	debug_level = {self.debug_level}
	session_timeout = 0
	event_loops = {self.event_loops}
	server_name = "ferry-bench-janus"
}}
certificates: {{
}}
media: {{
	ipv6 = false
	rtp_port_range = "30000-59999"
}}
nat: {{
	nice_debug = {str(self.nice_debug).lower()}
	ice_lite = {str(self.ice_lite).lower()}
	full_trickle = false
	ice_enforce_list = "{self.host}"
	ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
	broadcast = false
}}
"""
        )
        (self.dir / "janus.transport.http.jcfg").write_text(
            f"""general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {self.http_port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"""
        )
        (self.dir / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")

    async def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        env = dict(os.environ)
        if self.nice_debug:
            env.setdefault("NICE_DEBUG", "all")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [JANUS_BINARY, "-C", str(self.dir / "janus.jcfg"), "-F", str(self.dir), "-o"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            log.close()
        try:
            self.info = await wait_healthy(self.proc, f"{self.url}/info", timeout, "janus")
        except RuntimeError as exc:
            raise JanusError(f"{exc}; see {self.log_path}") from None

    def stop(self, keep_dir: bool = False) -> None:
        stop_child(self.proc)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------ HTTP API


class JanusApi:
    """One Janus session over HTTP: requests, plugin messages and a long-poll loop."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        self.url = url
        self.timeout = timeout
        self.session_id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def __aenter__(self) -> JanusApi:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        reply = await self._post(self.url, {"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._poller = asyncio.ensure_future(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        if self._http is not None:
            if self.session_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._post(self._session_url, {"janus": "destroy"}), 5)
            await self._http.close()
        self._http = None

    @property
    def _session_url(self) -> str:
        return f"{self.url}/{self.session_id}"

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        body = dict(body, transaction=f"t{next(self._ids)}")
        async with self._http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
            reply: dict[str, Any] = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {reply.get('error')}")
        return reply

    async def _poll(self) -> None:
        assert self._http is not None
        while True:
            try:
                url = f"{self._session_url}?maxev=16&rid={time.time_ns()}"
                async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=75)) as r:
                    got = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            for event in got if isinstance(got, list) else [got]:
                sender = event.get("sender")
                if sender is not None:
                    self._queue(int(sender)).put_nowait(event)

    def _queue(self, handle: int) -> asyncio.Queue[dict[str, Any]]:
        q = self._events.get(handle)
        if q is None:
            q = self._events[handle] = asyncio.Queue()
        return q

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> int:
        reply = await self._post(self._session_url, {"janus": "attach", "plugin": plugin})
        handle = int(reply["data"]["id"])
        self._queue(handle)
        return handle

    async def detach(self, handle: int) -> None:
        with contextlib.suppress(Exception):
            await self._post(f"{self._session_url}/{handle}", {"janus": "detach"})
        self._events.pop(handle, None)

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A plugin message: {"data": plugin data, "jsep": JSEP or None}. Synchronous
        requests (create) answer at once; asynchronous ones (join, publish, start) with
        the handle's next plugin event, taken from the long poll."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        reply = await self._post(f"{self._session_url}/{handle}", msg)
        if reply.get("janus") == "success":
            data = reply.get("plugindata", {}).get("data", {})
            if "error" in data:
                raise JanusError(f"{body.get('request')}: {data['error']}")
            return {"data": data}
        return await self.event(handle)

    async def event(self, handle: int, timeout: float | None = None) -> dict[str, Any]:
        """The next plugin event of ``handle``: {"data": ..., "jsep": ...}; raises on errors."""
        q = self._queue(handle)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JanusError(f"no event for handle {handle}")
            try:
                event = await asyncio.wait_for(q.get(), left)
            except TimeoutError:
                raise JanusError(f"no event for handle {handle}") from None
            if event.get("janus") != "event":
                continue  # webrtcup, media, slowlink, hangup: not replies
            data = event.get("plugindata", {}).get("data", {})
            if "error" in data:
                raise JanusError(f"videoroom: {data['error']} ({data.get('error_code')})")
            return {"data": data, "jsep": event.get("jsep")}

    async def trickle_completed(self, handle: int) -> None:
        """No (more) candidates from us: the answer's checks will find our address."""
        await self._post(
            f"{self._session_url}/{handle}", {"janus": "trickle", "candidate": {"completed": True}}
        )


# ------------------------------------------------------------------------------ ICE for a full peer


class IceFullMixin(LiteTransport):
    """What a lite transport needs toward a full ICE agent: answer its checks, take
    the ICE role the offer/answer gives (``controlling``) and the DTLS role the peer's
    ``a=setup`` leaves (server if Janus is ``active``)."""

    controlling = True
    checks_answered = 0

    def __init__(self, name: str, certificate: Any, **kwargs: Any) -> None:
        kwargs.setdefault("host", media_host())
        super().__init__(name, certificate, **kwargs)

    def set_remote(self, remote: TransportParameters) -> None:
        if self.dtls is not None:
            return
        addr = first_udp_candidate(remote.candidates)
        if addr is None:
            raise JanusError(f"{self.name}: Janus's SDP has no UDP candidate")
        self.remote_ufrag = remote.ice_ufrag
        self.remote_pwd = remote.ice_pwd.encode("utf8")
        if self.candidate_rewrite is not None:
            addr = self.candidate_rewrite(addr)  # a proxy on the way (bench/weak_janus.py)
        self.remote_addr = addr
        self.sock.connect(addr)
        role = "server" if remote.setup == "active" else "client"
        self.dtls = DtlsSession(self.certificate, role=role, remote_fingerprints=list(remote.fingerprints))
        if role == "server":
            self.dtls.start(0.0)  # waits for Janus's ClientHello

    def _on_stun(self, data: bytes) -> None:
        if data[:2] != STUN_BINDING_REQUEST:
            super()._on_stun(data)
            return
        try:
            msg = stun.parse_message(data)
        except Exception:
            self.log_once("stun_malformed")
            return
        username = str(msg.attributes.get("USERNAME", ""))
        if self.remote_addr is None or not username.startswith(f"{self.ufrag}:"):
            return
        try:
            if not msg.check_message_integrity(self.pwd.encode("utf8")):
                self.log_once("stun_request_integrity")
                return
        except Exception:
            self.log_once("stun_request_integrity")
            return
        reply = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=msg.transaction_id,
        )
        reply.attributes["XOR-MAPPED-ADDRESS"] = self.remote_addr
        reply.add_message_integrity(self.pwd.encode("utf8"))
        self._send_raw(bytes(reply))
        self.checks_answered += 1

    def _send_check(self, now_ms: float, *, nominate: bool) -> None:
        msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self.remote_ufrag}:{self.ufrag}"
        msg.attributes["PRIORITY"] = _PRIORITY
        if self.controlling:
            msg.attributes["ICE-CONTROLLING"] = self._tie_breaker
            if nominate:
                msg.attributes["USE-CANDIDATE"] = None
        else:
            msg.attributes["ICE-CONTROLLED"] = self._tie_breaker
        msg.add_message_integrity(self.remote_pwd)
        if len(self._pending_tids) > 64:
            for tid in list(self._pending_tids)[:32]:
                del self._pending_tids[tid]
        self._pending_tids[msg.transaction_id] = now_ms
        self._send_raw(bytes(msg))


class JanusLitePublisher(LitePublisher, IceFullMixin):
    """A :class:`LitePublisher` that also answers Janus's checks."""


class JanusLiteSubscriber(LiteSubscriber, IceFullMixin):
    """A :class:`LiteSubscriber` that also answers Janus's checks (controlled: Janus offers)."""

    controlling = False


class JanusRawSubscriber(RawSubscriber, IceFullMixin):
    """bench/forward_rx.py's raw counter (no RTCP, optional latency) toward Janus."""

    controlling = False


# ------------------------------------------------------------------------------ VideoRoom roles


async def create_room(api: JanusApi, handle: int, room: int, publishers: int = 1) -> None:
    await api.message(
        handle,
        {
            "request": "create",
            "room": room,
            "publishers": publishers,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "bitrate": 0,
            "fir_freq": 0,
            "notify_joining": False,
            "audiolevel_event": False,
            "permanent": False,
        },
    )


class JanusPublisher:
    """The bench publisher's clip sent into a VideoRoom through a lite publisher transport."""

    def __init__(
        self,
        api: JanusApi,
        room: int,
        certificate: Any,
        video: Sequence[bytes],
        audio: Sequence[bytes] | None,
        *,
        fps: int = 30,
        connect_timeout: float = 15.0,
    ) -> None:
        self.api = api
        self.room = room
        self.connect_timeout = connect_timeout
        stream = AudioStream(audio) if audio else None
        self.transport = JanusLitePublisher(
            certificate, [VideoLayer(None, list(video))], stream, fps=fps, simulcast=False, name="janus-pub"
        )
        self.handle = 0
        self.feed_id = 0

    async def publish(self) -> None:
        pub = self.transport
        self.handle = await self.api.attach()
        joined = await self.api.message(
            self.handle, {"request": "join", "ptype": "publisher", "room": self.room, "display": "pub"}
        )
        self.feed_id = int(joined["data"]["id"])
        layer = pub.layers[0]
        offer = build_publisher_offer(
            ufrag=pub.ufrag,
            pwd=pub.pwd,
            fingerprint=pub.fingerprint,
            port=pub.port,
            audio_ssrc=pub.audio.ssrc if pub.audio else None,
            video_ssrcs=[(layer.ssrc, layer.rtx_ssrc)],
            rids=None,
            stream_id=secrets.token_hex(8),
            audio_track_id=secrets.token_hex(8),
            video_track_id=secrets.token_hex(8),
            cname=pub.cname,
            host=media_host(),
        )
        reply = await self.api.message(
            self.handle,
            {"request": "publish", "audio": pub.audio is not None, "video": True},
            {"type": "offer", "sdp": offer},
        )
        if not reply.get("jsep"):
            raise JanusError(f"publish: no answer from Janus ({reply['data']})")
        answer = sdp.parse(reply["jsep"]["sdp"], "answer")
        pub.set_mids("0" if pub.audio else None, "1" if pub.audio else "0")
        pub.set_remote(answer.transport)
        await self.api.trickle_completed(self.handle)
        pub.start(self.connect_timeout)
        await pub.wait_connected(self.connect_timeout + 1.0)
        pub.start_media()

    async def leave(self) -> None:
        self.transport.close()
        if self.handle:
            await self.api.detach(self.handle)


class JanusSubscriber:
    """One VideoRoom subscriber handle around a lite subscriber transport (or a subclass)."""

    def __init__(self, api: JanusApi, room: int, transport: LiteSubscriber, connect_timeout: float = 30.0) -> None:
        self.api = api
        self.room = room
        self.subscriber = transport
        self.connect_timeout = connect_timeout
        self.handle = 0

    async def join(self, feed_id: int) -> None:
        self.handle = await self.api.attach()
        reply = await self.api.message(
            self.handle,
            {"request": "join", "ptype": "subscriber", "room": self.room, "streams": [{"feed": feed_id}]},
        )
        jsep = reply.get("jsep")
        if not jsep:
            raise JanusError(f"subscriber join: no offer from Janus ({reply['data']})")
        offer = sdp.parse(jsep["sdp"], "offer")
        sub = self.subscriber
        sub.apply_offer(offer)
        answer = build_subscriber_answer(
            offer, ufrag=sub.ufrag, pwd=sub.pwd, fingerprint=sub.fingerprint, twcc=sub.twcc_enabled
        )
        # The ICE role the offer/answer gives: Janus offered, so a full Janus controls;
        # toward an ICE-lite Janus the subscriber must control.
        if isinstance(sub, IceFullMixin):
            sub.controlling = offer.transport.ice_lite
        sub.set_remote(offer.transport)
        await self.api.message(self.handle, {"request": "start"}, {"type": "answer", "sdp": answer})
        await self.api.trickle_completed(self.handle)
        sub.start(self.connect_timeout)

    @property
    def received(self) -> dict[int, Any]:
        return self.subscriber.received

    async def leave(self) -> None:
        self.subscriber.close()
        if self.handle:
            await self.api.detach(self.handle)


def new_room_id() -> int:
    return random.randrange(10_000, 2**31)
