"""The ``ferry`` command line.

``main(argv)`` returns an exit code instead of calling ``sys.exit`` so tests can drive it
(STYLE §7): 0 success, 2 usage error (argparse's convention), 1 runtime error reported in
one line without a traceback.

Other packages plug in subcommands without this module importing them eagerly: each module
in :data:`PLUGIN_MODULES` that exists and defines ``register(subparsers)`` is called with the
argparse subparsers object. A plugin adds its parser and sets ``func``::

    def register(subparsers):
        p = subparsers.add_parser("netem", help="...")
        p.set_defaults(func=run)     # run(args: argparse.Namespace) -> int

``args.env`` holds the environment mapping to use instead of ``os.environ``.

A plugin whose module (or package) is not there at all is skipped: an install may leave
a package out. One that is there but fails to import (a syntax error, a missing name or
dependency) makes every ``ferry`` command fail with the error and its traceback, never
a command that silently vanishes; so a plugin module imports only what every install
has, and its commands import optional dependencies when they run. A module without
``register`` adds no command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from signaling.auth import mint_token
from signaling.config import CAPTION_MODES, LOG_LEVELS, ConfigError, load_config

__all__ = [
    "LOG_FORMAT",
    "PLUGIN_MODULES",
    "PluginError",
    "build_parser",
    "main",
    "parse_duration",
    "setup_logging",
]

log = logging.getLogger("ferry.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Order matters where one plugin extends another's command: qa.cli adds to `ferry netem`.
PLUGIN_MODULES = ("netem.cli", "qa.cli", "clients.cli", "recorder.cli", "signaling.audit")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class CliError(Exception):
    """A runtime failure to report as ``ferry: error: <message>`` with exit code 1."""


class PluginError(CliError):
    """One of Ferry's own subcommand modules is there but cannot be imported."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(
            f"the subcommands of {module} cannot be loaded: {type(cause).__name__}: {cause}"
        )
        self.module = module


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"`` → seconds (argparse ``type``)."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a positive number with optional unit s, m, h or d"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"port must be in 1..65535 (0: any free port), got {value}"
        )
    return value


class _FerryLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type so repeated :func:`setup_logging` calls reuse one handler."""


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """One line per record (:data:`LOG_FORMAT`) on stderr, root level ``level``.

    Idempotent and non-destructive: it adds its own handler once and only adjusts the level
    afterwards, leaving other handlers (pytest's capture, an embedding app's) in place,
    unlike ``basicConfig(force=True)`` which would close them.
    """
    root = logging.getLogger()
    if not any(isinstance(h, _FerryLogHandler) for h in root.handlers):
        handler = _FerryLogHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level.upper())


# --- serve -------------------------------------------------------------------------------


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the SFU (HTTP/WebSocket, QUIC, media)")
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=_port, metavar="N", help="HTTP/WebSocket port (TCP)")
    p.add_argument("--media-port", type=_port, metavar="N", help="media port (UDP, ICE-lite)")
    p.add_argument("--quic-port", type=_port, metavar="N", help="QUIC/WebTransport port (UDP)")
    p.add_argument(
        "--announce-ip",
        action="append",
        dest="announce_ips",
        metavar="IP",
        help="address put in ICE candidates; repeat for several",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    p.add_argument(
        "--dev",
        action="store_const",
        const=True,
        dest="allow_dev_keys",
        help="allow generated dev keys (no API key) on a non-loopback --host",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        metavar="ORIGIN",
        help="browser origin allowed on /ws besides this host and loopback "
        "(https://meet.example.com, or * for any); repeat for several",
    )
    p.add_argument("--recordings", dest="recordings_dir", metavar="DIR", help="where recordings go (default ./recordings)")
    p.add_argument(
        "--data-dir", dest="data_dir", metavar="DIR", help="room message history (default: data beside --recordings)"
    )
    p.add_argument(
        "--auto-record",
        action="append",
        dest="auto_record_rooms",
        metavar="ROOM",
        help="record this room from its creation on (* for every room); repeat for several",
    )
    p.add_argument(
        "--captions",
        choices=CAPTION_MODES,
        help="live captions of every room by default (default whisper: the bundled tiny.en)",
    )
    p.add_argument("--whisper-model", metavar="PATH", help="a CTranslate2 Whisper model folder (default tiny.en)")
    p.add_argument("--vosk-model", metavar="PATH", help="a Vosk model folder (needed for --captions vosk)")
    p.add_argument(
        "--captions-language", metavar="CODE", help="the rooms' caption language (default en; the model must have it)"
    )
    p.set_defaults(func=_cmd_serve)


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "host": args.host,
        "http_port": args.http_port,
        "media_port": args.media_port,
        "quic_port": args.quic_port,
        "announce_ips": args.announce_ips,
        "log_level": args.log_level,
        "allow_dev_keys": args.allow_dev_keys,
        "allowed_origins": args.allowed_origins,
        "recordings_dir": args.recordings_dir,
        "data_dir": args.data_dir,
        "auto_record_rooms": args.auto_record_rooms,
        "captions": args.captions,
        "whisper_model": args.whisper_model,
        "vosk_model": args.vosk_model,
        "captions_language": args.captions_language,
    }


def _cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.env, _serve_overrides(args))
    setup_logging(config.log_level)
    # Empty api_keys is passed through on purpose: the server then runs in dev mode
    # (generates and prints a key pair, serves /api/dev-token for the web client).
    # Imported lazily: keeps `ferry token` and `--help` free of the media stack.
    app = importlib.import_module("signaling.app")
    try:
        app.run(config)
    except KeyboardInterrupt:
        log.info("interrupted; exiting")
    return 0


# --- token -------------------------------------------------------------------------------


def _add_token(sub: Any) -> None:
    p = sub.add_parser("token", help="mint a join token (printed on stdout)")
    p.add_argument("--room", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--name", help="display name (default: the identity)")
    p.add_argument(
        "--ttl", type=parse_duration, default=6 * 3600.0, help="validity, e.g. 90s, 30m, 6h, 1d"
    )
    p.add_argument("--api-key", help="default $FERRY_API_KEY")
    p.add_argument("--api-secret", help="default $FERRY_API_SECRET")
    p.add_argument("--no-publish", action="store_true", help="deny canPublish")
    p.add_argument("--no-subscribe", action="store_true", help="deny canSubscribe")
    p.add_argument("--admin", action="store_true", help="grant roomAdmin")
    p.add_argument("--record", action="store_true", help="grant roomRecord")
    p.add_argument("--hidden", action="store_true", help="join invisibly to others")
    p.set_defaults(func=_cmd_token)


def _cmd_token(args: argparse.Namespace) -> int:
    key = args.api_key or args.env.get("FERRY_API_KEY")
    secret = args.api_secret or args.env.get("FERRY_API_SECRET")
    if not key or not secret:
        raise CliError(
            "an API key and secret are required: pass --api-key and --api-secret or set "
            "FERRY_API_KEY and FERRY_API_SECRET (`ferry serve` without keys prints a dev pair)"
        )
    token = mint_token(
        key,
        secret,
        identity=args.identity,
        room=args.room,
        name=args.name,
        ttl_s=args.ttl,
        now=time.time(),
        can_publish=not args.no_publish,
        can_subscribe=not args.no_subscribe,
        room_admin=args.admin,
        room_record=args.record,
        hidden=args.hidden,
    )
    print(token)
    return 0


# --- plumbing ----------------------------------------------------------------------------


def _absent(module: str, exc: ModuleNotFoundError) -> bool:
    """True when `module` itself or a package above it is missing (not a dependency)."""
    missing = exc.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def _register_plugins(sub: Any, modules: Sequence[str]) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not _absent(name, exc):
                raise PluginError(name, exc) from exc
            log.debug("no ferry subcommands from %s: not installed", name)
            continue
        except Exception as exc:  # a SyntaxError, a missing name: anything but absence
            raise PluginError(name, exc) from exc
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)


def build_parser(plugins: Sequence[str] = PLUGIN_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Ferry SFU")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    _add_token(sub)
    _register_plugins(sub, plugins)
    return parser


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``ferry`` console script; returns the exit code."""
    env = os.environ if env is None else env
    try:
        parser = build_parser()
    except PluginError as exc:
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        print(f"ferry: error: {exc}", file=sys.stderr)
        return 1
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    func = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        print("ferry: error: a command is required", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        setup_logging("warning")  # plugins get sane output; `serve` sets its own level
    # Commands read the environment from args.env, never os.environ, so tests can pass one.
    args.env = env
    try:
        return int(func(args) or 0)
    except (CliError, ConfigError, OSError) as exc:
        # Expected failures (bad config, port in use, missing key): one line, no traceback.
        print(f"ferry: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
