"""App wiring: the aiohttp server (web client, /ws, REST, /metrics) around the engine.

`FerryServer` is what tests start (ports may be 0 to pick free ones); `run(config)`
is what `ferry serve` calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiohttp import WSMsgType, web

from media.engine import Engine, EngineConfig

from .auth import AuthError, TokenVerifier, generate_dev_keys, mint_token
from .config import Config
from .metrics import CONTENT_TYPE, Metrics
from .protocol import MAX_MESSAGE_BYTES, encode
from .rooms import RoomManager
from .session import Session

log = logging.getLogger("ferry.signaling.app")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SEND_QUEUE_LIMIT = 2000
ROOM_TICK_S = 0.5


class FerryServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.dev_mode = not config.api_keys
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
        )
        self.metrics = Metrics()
        self.metrics.set_engine_stats(self._metrics_snapshot)
        self.ws_connections = 0
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self._room_timer: asyncio.Task | None = None
        self.http_port = config.http_port

    # -- lifecycle -----------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES * 4)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/rooms", self._api_rooms)
        app.router.add_get("/api/dev-token", self._api_dev_token)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get(r"/{name:[A-Za-z0-9_.-]+\.(?:js|css|html|svg|png)}", self._web_file)
        return app

    async def start(self) -> None:
        await self.engine.start()
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.http_port)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio server here
        if server is not None and server.sockets:
            self.http_port = server.sockets[0].getsockname()[1]
        self._room_timer = asyncio.create_task(self._room_ticker())
        log.info(
            "Ferry listening: http://%s:%d/ (ws /ws, /metrics), media udp %s:%d",
            self.config.host,
            self.http_port,
            self.config.host,
            self.engine.port,
        )

    async def stop(self) -> None:
        if self._room_timer is not None:
            self._room_timer.cancel()
        self.rooms.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engine.stop()

    async def _room_ticker(self) -> None:
        while True:
            await asyncio.sleep(ROOM_TICK_S)
            try:
                self.rooms.on_timer(time.time())
            except Exception:
                log.exception("room ticker failed")

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.http_port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

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
        room = request.query.get("room", "").strip()
        name = request.query.get("name", "").strip()
        if not room or not name or len(room) > 128 or len(name) > 128:
            return web.json_response(
                {"error": {"code": "bad_request", "message": "room and name are required (max 128 chars)"}},
                status=400,
            )
        identity = request.query.get("identity") or f"{name}-{int(time.time() * 1000) % 100000}"
        token = mint_token(
            self.api_key, self.api_secret, identity=identity, name=name, room=room, now=time.time()
        )
        return web.json_response({"token": token, "url": self.ws_url, "identity": identity})

    async def _api_rooms(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        try:
            claims = self.verifier.verify(token, now=time.time())
        except AuthError as exc:
            return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=401)
        if not claims.grants.room_admin:
            return web.json_response(
                {"error": {"code": "forbidden", "message": "roomAdmin grant required"}}, status=403
            )
        return web.json_response({"rooms": [room.info() for room in self.rooms.rooms.values()]})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_MESSAGE_BYTES, heartbeat=20.0)
        await ws.prepare(request)
        self.ws_connections += 1
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def send(message: dict) -> None:
            if queue.qsize() >= SEND_QUEUE_LIMIT:
                log.warning("signaling client too slow; closing its socket")
                queue.put_nowait(None)
                return
            queue.put_nowait(encode(message))

        def close() -> None:
            queue.put_nowait(None)

        session = Session(
            self.rooms,
            self.verifier,
            send,
            max_participants=self.config.max_participants_per_room,
            on_error=self.metrics.signaling_error,
            close=close,
        )
        writer = asyncio.create_task(self._writer(ws, queue))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    session.receive(msg.data, time.time())
                elif msg.type == WSMsgType.BINARY:
                    session.receive(msg.data, time.time())
                elif msg.type == WSMsgType.ERROR:
                    break
                if writer.done():
                    break
        finally:
            self.ws_connections -= 1
            session.disconnected(time.time())
            queue.put_nowait(None)
            try:
                await asyncio.wait_for(writer, 2.0)
            except Exception:
                writer.cancel()
        return ws

    async def _writer(self, ws: web.WebSocketResponse, queue: asyncio.Queue[str | None]) -> None:
        while True:
            text = await queue.get()
            if text is None:
                await ws.close()
                return
            try:
                await ws.send_str(text)
            except ConnectionError:
                return

    def _metrics_snapshot(self) -> dict[str, object]:
        data = self.engine.snapshot()
        data["rooms"] = len(self.rooms.rooms)
        data["participants"] = self.rooms.participant_count()
        data["ws_connections"] = self.ws_connections
        kinds: dict[str, int] = {"audio": 0, "video": 0}
        for room in self.rooms.rooms.values():
            for track in room.router.tracks.values():
                kinds[track.kind] = kinds.get(track.kind, 0) + 1
        data["tracks_by_kind"] = kinds
        return data


def run(config: Config) -> None:
    """Blocking entry point of `ferry serve`."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def main() -> None:
        server = FerryServer(config)
        await server.start()
        if server.dev_mode:
            print(
                f"No API key configured: generated a dev key for this run.\n"
                f"  FERRY_API_KEY={server.api_key}\n  FERRY_API_SECRET={server.api_secret}\n"
                f"Open {server.http_url}/ in Chrome to join a meeting.",
                flush=True,
            )
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
