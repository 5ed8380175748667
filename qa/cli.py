"""``ferry netem run`` / ``ferry netem list``: scenarios (and ``python -m qa.cli`` standalone).

The scenario commands live under ``ferry netem`` beside the emulator's own (relay,
proxy, profiles); ``register`` adds them to that command through
``netem.cli.subcommands``.

    ferry netem list
    ferry netem run FILE|NAME --out DIR [--url ws://HOST:PORT/ws] [--duration S] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netem import cli as netem_cli


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``run`` and ``list`` to the ``netem`` command in ``subparsers``; returns ``run``'s parser."""
    sub = netem_cli.subcommands(subparsers)
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
    return run_p


def _list_scenarios(args: argparse.Namespace) -> int:
    from qa.scenario import describe_builtin

    for name, desc in describe_builtin():
        print(f"{name:16} {desc}")
    return 0


def _run_scenario(args: argparse.Namespace) -> int:
    """Exit 0 when every expectation holds, 1 when one fails, 2 on a bad scenario/setup."""
    from qa.report import summary_table
    from qa.runner import RunOptions, run_scenario
    from qa.scenario import ScenarioError, load_scenario

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


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m qa.cli run|list`` (and the emulator's commands)."""
    parser = argparse.ArgumentParser(prog="ferry")
    subparsers = parser.add_subparsers(dest="command", required=True)
    netem_cli.register(subparsers)
    register(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "netem":
        argv = ["netem", *argv]
    return netem_cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
