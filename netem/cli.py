"""``ferry netem ...``: the emulator's subcommands (and ``python -m netem.cli`` standalone).

``register(subparsers)`` mounts the ``netem`` command on the ``ferry`` CLI's parser, so
both entry points share one definition. Other packages add subcommands to it through
:func:`subcommands` (``qa.cli`` adds ``run`` and ``list``, the scenario runner).

    ferry netem relay [--host 127.0.0.1] [--port 3478] [--control-port 0]
                      [--user NAME=PASSWORD ... | --password PW] [--allow-peer IP[:PORT] ...]
                      [--profile NAME=SPEC | NAME=UP|DOWN ...]
    ferry netem proxy --listen 127.0.0.1:9000 --target 127.0.0.1:7882 --up SPEC --down SPEC
    ferry netem profiles
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import weakref
from collections.abc import Sequence
from typing import Any

from netem.profiles import builtin_profiles, parse_profile_arg

# The ``netem`` parser -> its subcommands, for packages that add their own (qa).
_SUBCOMMANDS: weakref.WeakKeyDictionary[argparse.ArgumentParser, Any] = weakref.WeakKeyDictionary()


def subcommands(subparsers: Any) -> Any:
    """The ``netem`` command's subparsers in ``subparsers`` (registering ``netem`` first
    when it is not there yet). A subcommand added here sets ``netem_func``: it is called
    with the parsed arguments and returns the exit code (a ValueError exits 2)."""
    netem = subparsers.choices.get("netem")
    if netem is None or netem not in _SUBCOMMANDS:
        netem = register(subparsers)
    return _SUBCOMMANDS[netem]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``netem`` command (with its subcommands) to ``subparsers``."""
    netem = subparsers.add_parser(
        "netem", help="weak-network emulation (TURN relay, UDP proxy, scenarios)"
    )
    netem.set_defaults(func=run)
    sub = netem.add_subparsers(dest="netem_command", required=True)
    _SUBCOMMANDS[netem] = sub

    relay = sub.add_parser("relay", help="run the impairing TURN relay")
    relay.add_argument("--host", default="127.0.0.1")
    relay.add_argument("--port", type=int, default=3478)
    relay.add_argument("--realm", default="ferry")
    relay.add_argument("--user", action="append", default=[], metavar="NAME=PASSWORD",
                       help="a TURN user (the username may carry a profile: PROFILE:NAME)")
    relay.add_argument("--password", default=None,
                       help="one password for every username (env FERRY_NETEM_TURN_PASSWORD); "
                            "with neither this nor --user a random one is generated and printed")
    relay.add_argument("--allow-peer", action="append", default=None, metavar="IP[:PORT]",
                       help="an address allocations may reach (repeat; '*' for any); "
                            "default 127.0.0.1:7882, Ferry's default media address")
    relay.add_argument("--control-token", default=None,
                       help="bearer token for the control API (env FERRY_NETEM_CONTROL_TOKEN; "
                            "generated and printed when absent)")
    relay.add_argument("--profile", action="append", default=[], metavar="NAME=SPEC",
                       help="add/override a profile: NAME=SPEC or NAME=UP|DOWN (netem words)")
    relay.add_argument("--control-port", type=int, default=None,
                       help="serve the JSON control API on this port (127.0.0.1)")
    relay.add_argument("--seed", type=int, default=0)
    relay.set_defaults(netem_func=_run_relay)

    proxy = sub.add_parser("proxy", help="run a UDP proxy for a fixed endpoint")
    proxy.add_argument("--listen", required=True, metavar="HOST:PORT")
    proxy.add_argument("--target", required=True, metavar="HOST:PORT")
    proxy.add_argument("--up", default="", metavar="SPEC", help="client -> target (netem words)")
    proxy.add_argument("--down", default="", metavar="SPEC", help="target -> client")
    proxy.add_argument("--seed", type=int, default=0)
    proxy.set_defaults(netem_func=_run_proxy)

    profiles = sub.add_parser("profiles", help="list the built-in profiles")
    profiles.add_argument("--json", action="store_true")
    profiles.set_defaults(netem_func=_list_profiles)
    return netem


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``netem`` command; returns an exit code."""
    try:
        return int(args.netem_func(args))
    except ValueError as exc:
        print(f"ferry netem: {exc}", file=sys.stderr)
        return 2


def _list_profiles(args: argparse.Namespace) -> int:
    profiles = builtin_profiles()
    if args.json:
        print(json.dumps({n: p.to_dict() for n, p in profiles.items()}, indent=2))
        return 0
    for name, p in profiles.items():
        print(f"{name:14} {p.description}")
        print(f"{'':14}   up:   {p.up.spec() or '-'}")
        print(f"{'':14}   down: {p.down.spec() or '-'}")
    return 0


async def _serve_forever() -> None:
    await asyncio.Event().wait()


def _relay_credentials(args: argparse.Namespace) -> tuple[dict[str, str], str | None, bool]:
    """(users, shared password, generated?) from ``--user``, ``--password`` or the env."""
    import os
    import secrets

    users: dict[str, str] = {}
    for arg in args.user:
        name, sep, password = arg.partition("=")
        if not sep or not name or not password:
            raise ValueError(f"bad --user {arg!r} (use NAME=PASSWORD)")
        users[name] = password
    password = args.password or os.environ.get("FERRY_NETEM_TURN_PASSWORD") or None
    if users or password:
        return users, password, False
    return users, secrets.token_urlsafe(12), True


def _run_relay(args: argparse.Namespace) -> int:
    import os

    from netem.turn import DEFAULT_ALLOWED_PEERS, TurnRelay

    profiles: dict[str, Any] = dict(builtin_profiles())
    for arg in args.profile:
        p = parse_profile_arg(arg)
        profiles[p.name] = p
    users, password, generated = _relay_credentials(args)
    peers = args.allow_peer or list(DEFAULT_ALLOWED_PEERS)
    control_token = args.control_token or os.environ.get("FERRY_NETEM_CONTROL_TOKEN") or None

    async def main() -> None:
        relay = TurnRelay(args.host, args.port, realm=args.realm, users=users, password=password,
                          allowed_peers=peers, profiles=profiles, seed=args.seed)
        host, port = await relay.start()
        print(f"turn relay on {host}:{port} realm {args.realm}; profiles: {', '.join(profiles)}",
              flush=True)
        print(f"relaying only to: {', '.join(relay.allowed_peers)}", flush=True)
        if generated:
            print(f"TURN password (any username, e.g. 3g:alice): {password}", flush=True)
        if args.control_port is not None:
            chost, cport = await relay.start_control(port=args.control_port, token=control_token)
            shown = "the configured token" if control_token else relay.control_token
            print(f"control API on http://{chost}:{cport}/ (Authorization: Bearer {shown})",
                  flush=True)
        try:
            await _serve_forever()
        finally:
            await relay.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _run_proxy(args: argparse.Namespace) -> int:
    from netem.proxy import UdpProxy, parse_addr

    proxy = UdpProxy(parse_addr(args.listen), parse_addr(args.target), args.up, args.down,
                     seed=args.seed)

    async def main() -> None:
        host, port = await proxy.start()
        print(f"udp proxy {host}:{port} -> {args.target}", flush=True)
        try:
            await _serve_forever()
        finally:
            await proxy.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m netem.cli relay|proxy|profiles``."""
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "netem":
        argv = ["netem", *argv]
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
