"""Sans-I/O cores read no clock, never sleep and draw no unseeded randomness (STYLE habit 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORES = [
    *sorted((ROOT / "media" / "wire").glob("*.py")),
    *sorted((ROOT / "media" / "rtp").glob("*.py")),
    *sorted((ROOT / "media" / "bwe").glob("*.py")),
    *sorted((ROOT / "media" / "audio").glob("*.py")),
    ROOT / "media" / "routing" / "allocator.py",
    ROOT / "media" / "transport" / "ice_lite.py",
    ROOT / "media" / "transport" / "dtls.py",
    ROOT / "netem" / "link.py",
    ROOT / "netem" / "loss.py",
    ROOT / "netem" / "rate.py",
    ROOT / "netem" / "sim.py",
    ROOT / "recorder" / "depacketize.py",
    ROOT / "recorder" / "jitter.py",
    ROOT / "recorder" / "assembler.py",
]
BANNED_MODULES = {"asyncio", "time", "socket"}
# random.Random(seed) instances are fine; the module-level functions are not.
BANNED_RANDOM = {"random", "randint", "randrange", "choice", "uniform", "gauss", "shuffle", "seed"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                found.append(f"{path.name}:{node.lineno} imports from {node.module}")
            if node.module == "random" and any(a.name in BANNED_RANDOM for a in node.names):
                found.append(f"{path.name}:{node.lineno} imports module-level random functions")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr in BANNED_RANDOM
        ):
            found.append(f"{path.name}:{node.lineno} calls random.{node.attr}()")
    return found


@pytest.mark.parametrize("path", [p for p in CORES if p.name != "__init__.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_core_is_sans_io(path: Path) -> None:
    assert path.exists()
    assert _violations(path) == []
