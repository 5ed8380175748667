"""``ferry client join``: the aiortc client from the command line (a ``ferry`` plugin)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiortc.mediastreams import MediaStreamTrack

from .channel import FerryError
from .client import FerryClient
from .loopback import allow_loopback


def _make_tracks(spec: str | None) -> list[MediaStreamTrack]:
    from .media_sources import TestPatternVideoTrack, ToneAudioTrack, file_tracks

    if not spec:
        return []
    if spec == "pattern":
        return [TestPatternVideoTrack()]
    if spec == "tone":
        return [ToneAudioTrack()]
    if spec == "both":
        return [ToneAudioTrack(), TestPatternVideoTrack()]
    audio, video = file_tracks(spec)
    return [t for t in (audio, video) if t is not None]


async def run_join(args: argparse.Namespace) -> int:
    """``ferry client join``: join, optionally publish, print a JSON stats line per interval.

    Stats lines show the tracks received at that moment (empty once the others have
    left); the final ``{"event": "left", "received": ...}`` line lists every track
    received during the call with its counters.
    """
    patch = None if args.no_loopback or args.relay else allow_loopback()
    client = FerryClient(
        turn_url=args.turn,
        turn_username=args.turn_user,
        turn_password=args.turn_pass,
        relay_only=args.relay,
        connect_timeout=args.connect_timeout,
        use_server_ice_servers=args.server_ice_servers,
    )
    client.quic_insecure = getattr(args, "insecure", False)
    start = time.monotonic()
    try:
        await client.connect(args.url)
        reply = await client.join(args.token)
        print(
            json.dumps(
                {
                    "event": "joined",
                    "room": reply.get("room"),
                    "participant": reply.get("participant"),
                }
            ),
            flush=True,
        )
        tracks = _make_tracks(args.publish)
        if tracks:
            published = await client.publish(*tracks)
            print(json.dumps({"event": "published", "tracks": published}), flush=True)
        end = start + args.duration if args.duration > 0 else float("inf")
        while time.monotonic() < end:
            await asyncio.sleep(min(args.stats_interval, max(0.0, end - time.monotonic())))
            line = {"t": round(time.monotonic() - start, 3), **await client.stats()}
            print(json.dumps(line, default=str), flush=True)
        await client.leave()
        # The last word: what arrived over the whole call, whoever left first.
        summary = {"event": "left", "t": round(time.monotonic() - start, 3), "received": client.received()}
        print(json.dumps(summary, default=str), flush=True)
        return 0
    except FerryError as exc:
        print(
            json.dumps({"event": "error", "code": exc.code, "message": exc.message}),
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        await client.close()
        if patch is not None:
            patch.undo()


def _cmd_join(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_join(args))
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ferry client join ...`` to the main CLI (a plugin of ``signaling.cli``).

    The handler is stored as ``func`` (``args.func(args) -> int``, synchronous; it runs
    its own event loop).
    """
    client = subparsers.add_parser("client", help="Python test client (aiortc)")
    sub = client.add_subparsers(dest="client_command", required=True)
    join = sub.add_parser("join", help="join a room, optionally publish, print JSON stats lines")
    join.add_argument(
        "--url",
        default="ws://127.0.0.1:7880/ws",
        help="signaling URL: ws://HOST:7880/ws, or quic://HOST:7881?sha256=HEX (raw QUIC, the "
        "certificate pinned by the certificate_sha256 of /api/webtransport)",
    )
    join.add_argument(
        "--insecure",
        action="store_true",
        help="quic:// without sha256: do not verify the server certificate (dev only)",
    )
    join.add_argument("--token", required=True, help="JWT (see `ferry token`)")
    join.add_argument(
        "--publish", default=None, help="pattern | tone | both | path to a media file"
    )
    join.add_argument(
        "--duration", type=float, default=10.0, help="seconds before leaving (0 = forever)"
    )
    join.add_argument(
        "--stats-interval", type=float, default=1.0, help="seconds between stats lines"
    )
    join.add_argument(
        "--connect-timeout", type=float, default=10.0, help="ICE/DTLS connect timeout"
    )
    join.add_argument("--turn", default=None, help="TURN URL, e.g. turn:127.0.0.1:3478")
    join.add_argument("--turn-user", default=None)
    join.add_argument("--turn-pass", default=None)
    join.add_argument("--relay", action="store_true", help="relay-only ICE policy (needs --turn)")
    join.add_argument(
        "--server-ice-servers", action="store_true", help="also use the join reply's ice_servers"
    )
    join.add_argument(
        "--no-loopback", action="store_true", help="do not patch aioice to gather 127.0.0.1"
    )
    join.set_defaults(func=_cmd_join)
