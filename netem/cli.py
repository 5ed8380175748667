"""``ferry netem ...`` subcommands (and ``python -m netem.cli`` standalone).

Why a ``register(subparsers)`` function: the lead's ``ferry`` CLI owns the
top-level parser and mounts ours, so both entry points share one definition.

    ferry netem relay [--host 127.0.0.1] [--port 3478] [--control-port 0]
                      [--user NAME=PASSWORD ... | --password PW] [--allow-peer IP[:PORT] ...]
                      [--profile NAME=SPEC | NAME=UP|DOWN ...]
    ferry netem proxy --listen 127.0.0.1:9000 --target 127.0.0.1:7882 --up SPEC --down SPEC
    ferry netem profiles
    ferry netem list
    ferry netem run FILE|NAME --out DIR [--url ws://HOST:PORT/ws] [--duration S] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from netem.profiles import builtin_profiles, parse_profile_arg


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``netem`` command (with its subcommands) to ``subparsers``."""
    netem = subparsers.add_parser(
        "netem", help="weak-network emulation (TURN relay, UDP proxy, scenarios)"
    )
    netem.set_defaults(func=run)
    sub = netem.add_subparsers(dest="netem_command", required=True)

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

    run_p = sub.add_parser("run", help="run a scenario (YAML file or built-in name) and report")
    run_p.add_argument("scenario", metavar="FILE", help="scenario YAML, or a built-in name (see list)")
    run_p.add_argument("--out", required=True, metavar="DIR",
                       help="where report.json, report.html and the PNG plots go")
    run_p.add_argument("--url", default=None, metavar="WS_URL",
                       help="use this Ferry (ws://HOST:PORT/ws) instead of starting one; "
                            "needs FERRY_API_KEY/FERRY_API_SECRET to mint tokens")
    run_p.add_argument("--relay-peer", action="append", default=None, metavar="IP[:PORT]",
                       help="with --url: Ferry's media address the relay may reach (repeat); "
                            "default: any port of the URL's host")
    run_p.add_argument("--duration", type=float, default=None, metavar="S",
                       help="override the duration (the link schedule is scaled with it)")
    run_p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    run_p.add_argument("--connect-timeout", type=float, default=20.0, metavar="S")
    run_p.add_argument("--quiet", action="store_true", help="print only the summary table")
    run_p.set_defaults(netem_func=_run_scenario)

    list_p = sub.add_parser("list", help="list the built-in scenarios")
    list_p.set_defaults(netem_func=_list_scenarios)

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


def _list_scenarios(args: argparse.Namespace) -> int:
    from netem.scenario import describe_builtin

    for name, desc in describe_builtin():
        print(f"{name:16} {desc}")
    return 0


def _run_scenario(args: argparse.Namespace) -> int:
    """Exit 0 when every expectation holds, 1 when one fails, 2 on a bad scenario/setup."""
    from pathlib import Path

    from netem.report import summary_table
    from netem.runner import RunOptions, run_scenario
    from netem.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"ferry netem run: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(
        out_dir=Path(args.out),
        url=args.url,
        duration_s=args.duration,
        seed=args.seed,
        connect_timeout_s=args.connect_timeout,
        relay_peers=args.relay_peer,
        print_fn=None if args.quiet else (lambda line: print(line, flush=True)),
    )
    try:
        result = asyncio.run(run_scenario(scenario, options))
    except (RuntimeError, OSError, ScenarioError) as exc:
        print(f"ferry netem run: {exc}", file=sys.stderr)
        return 2
    print(summary_table(result), flush=True)
    print(f"report: {Path(args.out) / 'report.html'}", flush=True)
    if not result.passed:
        failed = [e["expect"] for e in result.expectations if not e["ok"]]
        print(f"ferry netem run: {len(failed)} expectation(s) failed: {'; '.join(failed)}",
              file=sys.stderr)
        return 1
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
    """Standalone entry point: ``python -m netem.cli relay|proxy|profiles|list|run``."""
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "netem":
        argv = ["netem", *argv]
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
