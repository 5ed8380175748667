"""``ferry record start|stop|list ROOM``: a running Ferry's recording API from the shell.

Thin HTTP client of ``POST``/``DELETE /api/rooms/{room}/recording`` and ``GET
/api/rooms/{room}/recordings`` (docs/protocol.md), standard library only. The token
needs ``roomRecord`` or ``roomAdmin`` for the room: ``--token`` or ``$FERRY_TOKEN``,
e.g. from ``ferry token --room R --identity ops --record``. Prints the server's JSON
answer; exit code 1 with the server's error message when it refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["ACTIONS", "add_parsers", "run"]

ACTIONS = {"start": ("POST", "recording"), "stop": ("DELETE", "recording"), "list": ("GET", "recordings")}
DEFAULT_URL = "http://127.0.0.1:7880"


def add_parsers(sub: Any) -> None:
    helps = {
        "start": "start recording a room on a running Ferry",
        "stop": "stop a room's recording (answers once its files are final)",
        "list": "a room's recordings: files, sizes, durations",
    }
    for action, text in helps.items():
        p = sub.add_parser(action, help=text)
        p.add_argument("room")
        p.add_argument("--url", default=DEFAULT_URL, help=f"Ferry's HTTP address (default {DEFAULT_URL})")
        p.add_argument("--token", help="bearer token with roomRecord or roomAdmin (default $FERRY_TOKEN)")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")


def run(args: argparse.Namespace) -> int:
    env = getattr(args, "env", None) or {}
    token = args.token or env.get("FERRY_TOKEN")
    if not token:
        print("ferry record: a token is required (--token or $FERRY_TOKEN; `ferry token --record` mints one)",
              file=sys.stderr)
        return 2
    method, tail = ACTIONS[args.record_command]
    url = f"{args.url.rstrip('/')}/api/rooms/{urllib.parse.quote(args.room, safe='')}/{tail}"
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310 - the operator's URL
            body = response.read()
    except urllib.error.HTTPError as exc:
        print(f"ferry record {args.record_command}: {exc.code} {_message(exc.read())}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"ferry record {args.record_command}: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(body.decode())
    return 0


def _message(body: bytes) -> str:
    try:
        data: Any = json.loads(body)
        error = data["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
