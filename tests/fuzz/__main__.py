"""`python -m tests.fuzz NAME --cases N`: run one fuzz target, print a JSON summary.

NAME is one of json, sdp, stun, rtp, rtcp, turn (tests/fuzz/targets.py). Inputs come
from a seeded mutation engine, so a run is reproducible from `--seed`. Each input runs
under a wall-clock alarm (`--hang-s`); an input that takes longer is a hang. Crashes are
grouped by exception type and the innermost Ferry frame; the first input of each group
is written to `--save-dir` (repr of the input) to turn into a regression test.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .mutate import Mutator
from .targets import TARGETS, Target, make


class Hang(Exception):
    """An input ran past the alarm."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang("input ran past the hang alarm")


def signature(exc: BaseException) -> str:
    """Exception type plus the innermost frame outside the fuzz harness."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "/tests/fuzz/" not in f.filename] or frames
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    return f"{type(exc).__name__} at {where}"


def run(target: Target, cases: int, seed: int, hang_s: float, save_dir: Path | None,
        progress_every: int, slow_s: float = 0.1) -> dict[str, Any]:
    mutator = Mutator(random.Random(seed))
    crashes: dict[str, dict[str, Any]] = {}
    slowest = 0.0
    slow: list[int] = []  # cases over slow_s: CPU amplification, or just a loaded machine
    signal.signal(signal.SIGALRM, _on_alarm)
    start = time.perf_counter()
    done = 0
    try:
        for i in range(cases):
            if i and i % target.reset_every == 0:
                target.reset()
            inp = mutator_input(target, mutator)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                target.run(inp)
            except Exception as exc:  # every exception out of a target is a finding
                signal.setitimer(signal.ITIMER_REAL, 0)
                sig = signature(exc)
                entry = crashes.setdefault(sig, {"count": 0, "first_case": i, "message": str(exc)[:300]})
                entry["count"] += 1
                if entry["count"] == 1:
                    print(f"[{target.name}] case {i}: {sig}: {str(exc)[:200]}", file=sys.stderr)
                    if save_dir is not None:
                        save_dir.mkdir(parents=True, exist_ok=True)
                        path = save_dir / f"{target.name}-{len(crashes)}.txt"
                        path.write_text(f"{sig}\n{''.join(traceback.format_exception(exc))}\n{inp!r}\n")
                        entry["saved"] = str(path)
                target.reset()  # the state after a crash is not trustworthy
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            took = time.perf_counter() - t0
            slowest = max(slowest, took)
            if took > slow_s:
                slow.append(i)
            done = i + 1
            if progress_every and done % progress_every == 0:
                elapsed = time.perf_counter() - start
                print(f"[{target.name}] {done} cases, {elapsed:.0f} s, {done / elapsed:.0f}/s, "
                      f"{sum(c['count'] for c in crashes.values())} crashes", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        target.close()
    seconds = time.perf_counter() - start
    report: dict[str, Any] = {
        "target": target.name,
        "cases": done,
        "seconds": round(seconds, 1),
        "cases_per_s": round(done / seconds, 1) if seconds else None,
        "crashes": sum(c["count"] for c in crashes.values()),
        "unique_crashes": crashes,
        "slowest_case_ms": round(slowest * 1000, 1),
        "slow_cases": len(slow),
        "first_slow_cases": slow[:10],
        "seed": seed,
    }
    swallowed = getattr(target, "swallowed", None)
    if swallowed:
        report["handled_errors"] = swallowed
    return report


def mutator_input(target: Target, mutator: Mutator) -> Any:
    return target.generate(mutator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(TARGETS))
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-s", type=float, default=5.0, help="an input taking longer is a hang")
    parser.add_argument("--save-dir", type=Path, default=None, help="write the first input of each crash here")
    parser.add_argument("--progress", type=int, default=0, help="print progress to stderr every N cases")
    parser.add_argument("--slow-ms", type=float, default=100.0, help="count inputs taking longer than this")
    args = parser.parse_args(argv)
    # Ferry logs what it drops (once per reason) and tracebacks for internal errors;
    # the summary counts those, so keep stderr for the fuzzer's own lines.
    # Restored on the way out: a test calls main() in-process.
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        target = make(args.name, args.seed)
        report = run(target, args.cases, args.seed, args.hang_s, args.save_dir, args.progress, args.slow_ms / 1000.0)
    finally:
        logging.disable(previous)
    print(json.dumps(report, indent=2))
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
