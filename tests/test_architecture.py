"""The shape of the code: sans-I/O cores, the direction of imports, no import circles.

Sans-I/O cores read no clock, never sleep and draw no unseeded randomness (STYLE habit 1).

Imports between Ferry's packages run one way (DESIGN §12)::

    media  <-  signaling  <-  clients  <-  qa        netem: stands alone
    media  <-  recorder, asr

A package imports only the packages to its left (and itself): ``media`` imports none of
the others; ``netem`` imports none of them either (``qa`` may use ``netem``); ``recorder``
and ``asr`` import ``media`` only. Wiring modules are the named exceptions in
:data:`WIRING`: the server plugs the recorder in from ``signaling.recording`` and the
caption engine from ``signaling.captions``, and the
``cli`` modules of recorder and asr may use signaling's configuration and auth. tests/
and bench/ may import anything. Imports inside ``if TYPE_CHECKING:`` count for the
direction (a type from above is still a dependency on above) but not for circles: they
never run, so they make no import-time circle (``media.routing.published_track`` and
``down_track`` name each other's types this way: a track lists its DownTracks, a
DownTrack forwards its track). Every other import counts for both,
including one inside a function (it runs on first call: a lazy import hides a circle,
it does not remove it).

No import circles: the graph of module imports (``a`` imports ``b`` when it imports
``b`` or a name from ``b``; ``from pkg import sub`` imports the module ``pkg.sub``) has
no strongly connected component with more than one module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
    ROOT / "asr" / "segmenter.py",
    ROOT / "asr" / "clock.py",
    ROOT / "signaling" / "resume.py",
    ROOT / "signaling" / "stream_framing.py",
    ROOT / "qa" / "bwe_simulation.py",
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


# --- import direction and circles ---------------------------------------------------------

# Each package and the Ferry packages it may import besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "media": frozenset(),
    "netem": frozenset(),
    "signaling": frozenset({"media"}),
    "clients": frozenset({"media", "signaling"}),
    "qa": frozenset({"media", "signaling", "clients", "netem"}),
    "recorder": frozenset({"media"}),
    "asr": frozenset({"media"}),
}
# Wiring modules: what each may import on top of its package's rule.
WIRING: dict[str, frozenset[str]] = {
    "signaling.recording": frozenset({"recorder"}),
    "signaling.streaming": frozenset({"recorder"}),
    "signaling.captions": frozenset({"asr", "recorder"}),
    "recorder.cli": frozenset({"signaling"}),
    "asr.cli": frozenset({"signaling"}),
}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    line: int
    type_only: bool  # inside `if TYPE_CHECKING:`


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the given package folders."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every Import / ImportFrom in `tree`, with whether it sits under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), type_only)
        else:
            yield from _imports(node, type_only)


def import_edges(module: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """The Ferry modules `module` imports (`known`: every module of the checked packages)."""
    is_package = path.name == "__init__.py"
    edges = []
    for node, type_only in _imports(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            assert isinstance(node, ast.ImportFrom)
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            # `import a.b.c` of a module we know, else its nearest known parent package.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.append(Edge(module, target, node.lineno, type_only))
    return edges


def all_edges(root: Path, packages: Iterable[str]) -> list[Edge]:
    known = module_files(root, packages)
    return [edge for module, path in known.items() for edge in import_edges(module, path, known)]


def direction_violations(
    edges: Iterable[Edge],
    allowed: dict[str, frozenset[str]] = ALLOWED,
    wiring: dict[str, frozenset[str]] = WIRING,
) -> list[str]:
    found = []
    for edge in edges:
        source_pkg, target_pkg = edge.source.split(".")[0], edge.target.split(".")[0]
        if source_pkg == target_pkg:
            continue
        if target_pkg in allowed[source_pkg] or target_pkg in wiring.get(edge.source, ()):
            continue
        kind = " (type-only)" if edge.type_only else ""
        found.append(f"{edge.source}:{edge.line} imports {edge.target}{kind}")
    return found


def import_circles(edges: Iterable[Edge]) -> list[list[str]]:
    """Strongly connected components (Tarjan) of more than one module, runtime edges only."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.type_only:
            graph.setdefault(edge.source, set()).add(edge.target)
            graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_every_import_between_packages_follows_the_package_order() -> None:
    edges = all_edges(ROOT, ALLOWED)
    assert any(e.source == "media.engine" and e.target == "media.routing.router" for e in edges)
    assert direction_violations(edges) == []


def test_no_module_import_circles() -> None:
    assert import_circles(all_edges(ROOT, ALLOWED)) == []


def test_the_rules_catch_wrong_direction_and_circles_but_not_type_only_ones(tmp_path: Path) -> None:
    files = {
        "media/__init__.py": "",
        "media/a.py": "from media import b\n",
        "media/b.py": "def f():\n    from . import a\n",  # a lazy import closes a circle
        "media/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from media.d import D\n",
        "media/d.py": "import media.c\nfrom signaling.x import y\n",  # c <-> d is type-only
        "signaling/__init__.py": "",
        "signaling/x.py": "from media.a import f\n",
        "netem/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import qa.r\n",
        "qa/__init__.py": "",
        "qa/r.py": "from netem import link\n",
        "recorder/__init__.py": "",
        "recorder/cli.py": "import signaling.x\n",  # wiring
        "recorder/core.py": "import signaling.x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = all_edges(tmp_path, ["media", "signaling", "netem", "qa", "recorder"])
    assert direction_violations(edges) == [
        "media.d:2 imports signaling.x",
        "netem:3 imports qa.r (type-only)",
        "recorder.core:1 imports signaling.x",
    ]
    assert import_circles(edges) == [["media.a", "media.b"]]
