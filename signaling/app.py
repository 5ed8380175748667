"""App wiring: the aiohttp server (web client, /ws, REST, /metrics) around the engine.

`FerryServer` is what tests start (ports may be 0 to pick free ones); `run(config)`
is what `ferry serve` calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import gc
import ipaddress
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web

from media.engine import Engine, EngineConfig

from .audit import AuditLog, AuditRoomEvents
from .auth import (
    ADMIN_ALL_ROOMS,
    AuthError,
    TokenVerifier,
    admin_scope,
    generate_dev_keys,
    mint_token,
    request_token,
)
from .captions import CaptionService
from .captions import add_routes as add_caption_routes
from .config import Config, ConfigError, is_loopback_host
from .messages_service import MessageService
from .metrics import CONTENT_TYPE, Metrics
from .moderation import ModerationService
from .moderation import add_routes as add_moderation_routes
from .origins import known_host, origin_allowed, request_host
from .protocol import MAX_MESSAGE_BYTES
from .quality import QualityService
from .quality import add_routes as add_quality_routes
from .quic_server import QuicSignaling
from .quic_server import add_routes as add_quic_routes
from .recording import RecordingService, add_routes
from .resume_service import ResumeService
from .rooms import RoomManager
from .session import Session
from .streaming import StreamService
from .streaming import add_routes as add_stream_routes
from .webhooks import WebhookEvents, WebhookNotifier
from .ws_connection import CLOSE_GRACE_S, WsConnection, raise_fd_limit

log = logging.getLogger("ferry.signaling.app")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ROOM_TICK_S = 0.5

ShutdownHook = Callable[[], Awaitable[None]]


class FerryServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.dev_mode = not config.api_keys
        if self.dev_mode and not is_loopback_host(config.host) and not config.allow_dev_keys:
            raise ConfigError(
                f"no API key configured and host {config.host} is not loopback: set "
                "FERRY_API_KEY/FERRY_API_SECRET (or api_keys), or pass --dev "
                "(allow_dev_keys: true) to hand out generated dev tokens on the network"
            )
        if self.dev_mode:
            key, secret = generate_dev_keys()
            self.api_keys = {key: secret}
        else:
            self.api_keys = dict(config.api_keys)
        self.api_key, self.api_secret = next(iter(self.api_keys.items()))
        self.verifier = TokenVerifier(self.api_keys)
        self.engine = Engine(
            EngineConfig(
                host=config.host,
                port=config.media_port,
                announce_ips=list(config.announce_ips),
                consent_timeout_ms=config.consent_timeout_s * 1000.0,
            )
        )
        self.rooms = RoomManager(
            self.engine,
            empty_timeout_s=config.room_empty_timeout_s,
            reconnect_grace_s=config.reconnect_grace_s,
            max_tracks_per_participant=config.max_tracks_per_participant,
            subscriber_answer_timeout_s=config.subscriber_answer_timeout_s,
        )
        self.recordings = RecordingService(
            self.engine, self.rooms, config.recordings_dir, auto_record=config.auto_record_rooms
        )
        self.captions = CaptionService(self.engine, self.rooms, config, recordings=self.recordings)
        self.streams = StreamService(self.rooms, self.recordings)  # live HLS renderers
        self.audit = AuditLog(config.audit_dir or "audit")
        self.moderation = ModerationService(self.rooms, self.audit)
        self.quality = QualityService(self.engine, self.rooms)
        self.webhooks = WebhookNotifier(self._webhook_endpoints(config))
        self.rooms.observers.append(AuditRoomEvents(self.audit))
        self.rooms.observers.append(WebhookEvents(self.webhooks))
        self.recordings.listeners.append(self._recording_event)
        self.captions.listeners.append(lambda event, fields: self.audit.write("captions", event=event, **fields))
        self.metrics = Metrics()
        self.metrics.set_engine_stats(self._metrics_snapshot)
        self.quic = QuicSignaling(config, self.new_session, self.metrics.signaling_error)
        self.resume = ResumeService(self.rooms)
        self.messages = MessageService(
            self.rooms,
            config.data_dir or "data",
            max_count=config.messages_max_per_room,
            max_age_s=config.messages_max_age_s,
        )
        self.ws_connections = 0
        self._connections_by_ip: dict[str, int] = {}
        self._per_ip_exempt = [ipaddress.ip_network(n) for n in config.per_ip_exempt]
        self._connections: set[WsConnection] = set()
        # Renderers end their playlists before the recordings they follow are finalized.
        self._shutdown_hooks: list[ShutdownHook] = [
            self.streams.stop_all,
            self.recordings.stop_all,
            self.captions.close,
            self.messages.close,  # commits what is queued: a restart loses no answered send
            self.webhooks.close,
        ]
        self.stopping = False
        self._stopped = False
        self._cut_short = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self._room_timer: asyncio.Task | None = None
        self.http_port = config.http_port
        self.http_port_bound = False

    # -- lifecycle -----------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES * 4)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/rooms", self._api_rooms)
        app.router.add_get("/api/dev-token", self._api_dev_token)
        add_quic_routes(app, self.quic, self._public_host)
        add_routes(app, self.recordings, self.verifier)
        add_stream_routes(app, self.streams, self.verifier)
        add_caption_routes(app, self.captions, self.verifier)
        add_moderation_routes(app, self.moderation, self.verifier)
        add_quality_routes(app, self.quality, self.verifier)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get(r"/{name:[A-Za-z0-9_.-]+\.(?:js|css|html|svg|png)}", self._web_file)
        return app

    def add_shutdown_hook(self, hook: ShutdownHook) -> None:
        """Run ``hook`` on stop, after clients were told and before rooms and transports close.

        Meant for work that must finish cleanly (a recorder finalizing its files). Hooks
        run in order within what is left of ``shutdown_timeout_s``; errors are logged.
        """
        self._shutdown_hooks.append(hook)

    def _webhook_endpoints(self, config: Config) -> list[tuple[str, str, str]]:
        endpoints = []
        for hook in config.webhooks:
            key = hook.get("api_key") or self.api_key
            if key not in self.api_keys:
                raise ConfigError(f"webhook {hook['url']}: api_key {key!r} is not configured")
            endpoints.append((hook["url"], key, self.api_keys[key]))
        return endpoints

    def _recording_event(self, event: str, fields: dict[str, object]) -> None:
        self.audit.write("recording", event=event, **fields)
        room = self.rooms.rooms.get(str(fields.get("room")))
        extra = {k: v for k, v in fields.items() if k != "room"}
        self.webhooks.notify(
            event, room={"sid": room.sid if room else None, "name": fields.get("room")}, recording=extra
        )

    def _audit_config(self) -> None:
        """The configuration in effect, without secrets."""
        settings = dataclasses.asdict(self.config)
        settings["api_keys"] = sorted(self.api_keys)
        settings["dev_mode"] = self.dev_mode
        self.audit.write("config", http_port=self.http_port, media_port=self.engine.port, settings=settings)

    async def start(self) -> None:
        await self.engine.start()
        self.webhooks.start()
        self.captions.start()
        # keepalive_timeout also closes a connection that has not completed its request
        # headers in that time (aiohttp arms it at connect): the header timeout.
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            keepalive_timeout=self.config.http_header_timeout_s,
            shutdown_timeout=CLOSE_GRACE_S,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.http_port)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio server here
        if server is not None and server.sockets:
            self.http_port = server.sockets[0].getsockname()[1]
        self.http_port_bound = True
        await self.quic.start()
        self._room_timer = asyncio.create_task(self._room_ticker())
        self._audit_config()
        log.info(
            "Ferry listening: http://%s:%d/ (ws /ws, /metrics), QUIC udp %s:%s, media udp %s:%d"
            " (send path: %s)",
            self.config.host,
            self.http_port,
            self.config.host,
            self.quic.port,
            self.config.host,
            self.engine.port,
            self.engine.mux.send_path_label,
        )

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully within ``timeout`` (default ``shutdown_timeout_s``).

        Stops accepting, ends every session with a ``leave`` event (reason
        ``server_shutdown``, so clients reconnect elsewhere), waits for the sockets to
        close, runs the shutdown hooks, then closes rooms, HTTP and the media transports.
        Whatever overruns the budget is cut short; the last steps always run.
        """
        if self._stopped:
            return
        self._stopped = True
        self.stopping = True
        budget = self.config.shutdown_timeout_s if timeout is None else timeout
        graceful = asyncio.ensure_future(self._stop_gracefully())
        cut = asyncio.ensure_future(self._cut_short.wait())
        await asyncio.wait([graceful, cut], timeout=budget, return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        if not graceful.done():
            graceful.cancel()
            log.warning("graceful stop cut short (budget %.1f s); closing the rest now", budget)
        elif graceful.exception() is not None:
            log.error("graceful stop failed", exc_info=graceful.exception())
        for conn in list(self._connections):
            conn.abort()
        if self._room_timer is not None:
            self._room_timer.cancel()
        self.rooms.close()
        self.messages.store.close()
        await asyncio.get_running_loop().run_in_executor(None, self.audit.close)
        await self.quic.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engine.stop()

    def cut_short(self) -> None:
        """Make a running :meth:`stop` skip what is left of its graceful part."""
        self._cut_short.set()

    async def _stop_gracefully(self) -> None:
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()  # closes the listening socket; open connections stay
        connections = list(self._connections)
        for conn in connections:
            if conn.session is not None:
                conn.session.end("server_shutdown")
            else:
                conn.close()
        quic = list(self.quic.connections)
        self.quic.end_all("server_shutdown")
        waits = [asyncio.ensure_future(c.closed.wait()) for c in connections]
        waits += [asyncio.ensure_future(c.wait_closed()) for c in quic]
        if waits:
            await asyncio.wait(waits)
        for hook in self._shutdown_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook %r failed", hook)

    async def _room_ticker(self) -> None:
        while True:
            await asyncio.sleep(ROOM_TICK_S)
            try:
                self.rooms.on_timer(time.time())
                self.quic.on_timer(datetime.datetime.now(datetime.UTC))
                self.recordings.on_timer(self.engine.now_ms())
                self.quality.on_timer(self.engine.now_ms())
            except Exception:
                log.exception("room ticker failed")

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.http_port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

    @property
    def quic_url(self) -> str:
        """Raw QUIC signaling (ALPN ``ferry``) for Python clients, pinning the certificate."""
        return self.quic.quic_url(self.config.host)

    def new_session(self, send: Callable[[dict], None], close: Callable[[], None]) -> Session:
        """A signaling session for a QUIC or WebTransport stream (same rules as /ws)."""
        return Session(
            self.rooms,
            self.verifier,
            send,
            max_participants=self.config.max_participants_per_room,
            on_error=self.metrics.signaling_error,
            close=close,
            recordings=self.recordings,
            captions=self.captions,
            resume=self.resume,
            messages=self.messages,
            moderation=self.moderation,
        )

    def token(self, room: str, identity: str, **grants: object) -> str:
        return mint_token(
            self.api_key, self.api_secret, identity=identity, room=room, now=time.time(), **grants
        )

    # -- handlers ------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = WEB_DIR / "index.html"
        if not index.exists():
            return web.Response(text="web client not found (is the web/ folder present?)", status=404)
        return web.FileResponse(index)

    async def _web_file(self, request: web.Request) -> web.StreamResponse:
        path = WEB_DIR / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "rooms": len(self.rooms.rooms)})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _api_dev_token(self, request: web.Request) -> web.Response:
        if not self.dev_mode:
            return web.json_response(
                {"error": {"code": "forbidden", "message": "dev tokens exist only when no API key is configured"}},
                status=403,
            )
        if not known_host(self.config, request_host(request)):
            return web.json_response(
                {
                    "error": {
                        "code": "forbidden",
                        "message": f"Host {request.host!r} is not this server's address (dev tokens are "
                        "served only to the bind, announce and loopback addresses)",
                    }
                },
                status=403,
            )
        room = request.query.get("room", "").strip()
        name = request.query.get("name", "").strip()
        if not room or not name or len(room) > 128 or len(name) > 128:
            return web.json_response(
                {"error": {"code": "bad_request", "message": "room and name are required (max 128 chars)"}},
                status=400,
            )
        identity = request.query.get("identity") or f"{name}-{int(time.time() * 1000) % 100000}"
        # Dev tokens may record (the page shows its record button) unless ?record=0.
        record = request.query.get("record", "1") != "0"
        token = mint_token(
            self.api_key, self.api_secret, identity=identity, name=name, room=room, now=time.time(),
            room_record=record,
        )
        return web.json_response({"token": token, "url": self.ws_url, "identity": identity})

    def _public_host(self, request: web.Request) -> str:
        """The request's host when it names this server, else the bind address."""
        host = request_host(request)
        return host if host is not None and known_host(self.config, host) else self.config.host

    async def _api_rooms(self, request: web.Request) -> web.Response:
        token = request_token(request.headers, request.query)
        try:
            claims = self.verifier.verify(token, now=time.time())
        except AuthError as exc:
            return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=401)
        try:
            scope = admin_scope(claims)
        except AuthError as exc:
            return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=403)
        rooms = [r for r in self.rooms.rooms.values() if scope in (ADMIN_ALL_ROOMS, r.name)]
        active = self.recordings.active
        return web.json_response({"rooms": [{**room.info(), "recording": active(room.name)} for room in rooms]})

    def _ws_refusal(self, request: web.Request, remote: str) -> tuple[int, str, str] | None:
        """(HTTP status, metrics code, message) when this upgrade must be refused."""
        if self.stopping:
            return 503, "shutting_down", "server shutting down"
        if not origin_allowed(self.config, request):
            return 403, "origin_forbidden", (
                f"Origin {request.headers.get('Origin')!r} is not allowed (allowed_origins)"
            )
        if self.ws_connections >= self.config.max_connections:
            return 503, "connection_limit", (
                f"server full: {self.ws_connections} connections (max_connections)"
            )
        per_ip = self.config.max_connections_per_ip
        if per_ip and self._connections_by_ip.get(remote, 0) >= per_ip and not self._cap_exempt(remote):
            return 429, "connection_limit", (
                f"too many connections from {remote} (max_connections_per_ip={per_ip})"
            )
        return None

    def _cap_exempt(self, remote: str) -> bool:
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in net for net in self._per_ip_exempt)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        remote = request.remote or "?"
        refusal = self._ws_refusal(request, remote)
        if refusal is not None:
            status, code, message = refusal
            self.metrics.signaling_error(code)
            log.debug("refused /ws from %s: %s", remote, message)
            return web.json_response({"error": {"code": code, "message": message}}, status=status)
        self.ws_connections += 1
        self._connections_by_ip[remote] = self._connections_by_ip.get(remote, 0) + 1
        try:
            return await self._serve_ws(request, remote)
        finally:
            self.ws_connections -= 1
            left = self._connections_by_ip.pop(remote) - 1
            if left:
                self._connections_by_ip[remote] = left

    async def _serve_ws(self, request: web.Request, remote: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_MESSAGE_BYTES, heartbeat=20.0)
        transport = request.transport
        await ws.prepare(request)
        conn = WsConnection(ws, transport, self.config.ws_send_queue_limit, remote)
        session = Session(
            self.rooms,
            self.verifier,
            conn.send,
            max_participants=self.config.max_participants_per_room,
            on_error=self.metrics.signaling_error,
            close=conn.close,
            recordings=self.recordings,
            captions=self.captions,
            resume=self.resume,
            messages=self.messages,
            moderation=self.moderation,
        )
        session.peer = {"remote": remote, "user_agent": request.headers.get("User-Agent")}
        conn.session = session
        self._connections.add(conn)
        join_timer = asyncio.get_running_loop().call_later(
            self.config.join_timeout_s, self._join_timeout, conn
        )
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    session.receive(msg.data, time.time())
                elif msg.type == WSMsgType.ERROR:
                    break
                if conn.writer.done():
                    break
        finally:
            join_timer.cancel()
            session.disconnected(time.time())
            conn.close()
            try:
                await asyncio.wait_for(asyncio.shield(conn.writer), CLOSE_GRACE_S)
            except (asyncio.CancelledError, Exception):
                conn.abort()
            conn.finished()
            self._connections.discard(conn)
            conn.closed.set()
        return ws

    def _join_timeout(self, conn: WsConnection) -> None:
        session = conn.session
        if session is None or session.joined or conn.closing:
            return
        log.info("closing signaling socket from %s: no join within %.0f s", conn.remote, self.config.join_timeout_s)
        self.metrics.signaling_error("join_timeout")
        conn.close(WSCloseCode.POLICY_VIOLATION, b"no join within join_timeout_s")

    def _metrics_snapshot(self) -> dict[str, object]:
        data = self.engine.snapshot()
        data["rooms"] = len(self.rooms.rooms)
        data["participants"] = self.rooms.participant_count()
        data["ws_connections"] = self.ws_connections
        data["quic_connections"] = len(self.quic.connections)
        kinds: dict[str, int] = {"audio": 0, "video": 0}
        for room in self.rooms.rooms.values():
            for track in room.router.tracks.values():
                kinds[track.kind] = kinds.get(track.kind, 0) + 1
        data["tracks_by_kind"] = kinds
        data.update(self.recordings.snapshot())
        data.update(self.captions.snapshot())
        data.update(self.messages.snapshot())
        data.update(self.webhooks.snapshot())
        data.update(audit_written=self.audit.written, audit_errors=self.audit.errors,
                    moderation_actions=self.moderation.actions)
        return data


def run(config: Config) -> None:
    """Blocking entry point of `ferry serve`; returns after a clean stop.

    SIGTERM (systemd, Docker, Kubernetes) and SIGINT both start :meth:`FerryServer.stop`,
    bounded by ``shutdown_timeout_s``; a second signal cuts the graceful part short.
    """
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    before, after = raise_fd_limit()
    if after != before:
        log.info("open-file limit raised from %d to %d", before, after)
    if config.max_connections + 64 > after:
        log.warning(
            "max_connections=%d is close to the open-file limit %d: connections past it fail",
            config.max_connections,
            after,
        )

    async def main() -> None:
        server = FerryServer(config)
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:  # before start: a signal during start-up stops after it
            loop.add_signal_handler(signum, stop_requested.set)
        try:
            await server.start()
            # Everything alive now (modules, the engine, the web app) lives as long as the
            # process: out of the cyclic GC's sight, a full collection scans only what
            # calls create, not hundreds of thousands of startup objects (bench/forward.py,
            # 80 subscribers, paced publisher: forwarding latency max 6-10 ms; full
            # collections of everything held the loop 30-65 ms).
            gc.collect()
            gc.freeze()
            if server.dev_mode:
                print(
                    f"No API key configured: generated a dev key for this run.\n"
                    f"  FERRY_API_KEY={server.api_key}\n  FERRY_API_SECRET={server.api_secret}\n"
                    f"Open {server.http_url}/ in Chrome to join a meeting.",
                    flush=True,
                )
            await stop_requested.wait()
            log.info("stopping: telling clients, closing rooms (at most %.0f s)", config.shutdown_timeout_s)
            for signum in signals:
                loop.add_signal_handler(signum, server.cut_short)
            await server.stop()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            if server.http_port_bound and not server.stopping:  # an error skipped the stop path
                await server.stop()
        log.info("stopped")

    asyncio.run(main())
