"""Import opuslib bound to a libopus that really loads: the system's, else PyAV's copy.

Why: ``opuslib.api`` runs ``ctypes.CDLL(find_library("opus"))`` when imported and raises
when the machine has no libopus (no Debian ``libopus0``), so a bare ``import opuslib``
makes Ferry's audio decoding depend on a system package that pip cannot install. PyAV,
a dependency anyway, ships a libopus in its wheel (``av.libs/libopus-*.so*`` on Linux,
``av/.dylibs/libopus*.dylib`` on macOS). :func:`load_opuslib` tries the system library
first (distribution security updates), then PyAV's, and makes opuslib use the first one
that ``dlopen`` accepts. Every opuslib user in Ferry goes through it; importing this
module loads nothing, so code that never decodes (``ferry serve``) never needs libopus.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

__all__ = ["bundled_libopus_paths", "find_libopus", "load_opuslib"]

_OPUSLIB_MODULES = ("opuslib.api", "opuslib.api.ctl", "opuslib.api.decoder", "opuslib.api.encoder")


def bundled_libopus_paths() -> list[Path]:
    """The libopus files PyAV's wheel ships beside the ``av`` package (may be empty)."""
    spec = importlib.util.find_spec("av")
    if spec is None or not spec.submodule_search_locations:
        return []
    found: list[Path] = []
    for location in spec.submodule_search_locations:
        package = Path(location)
        found.extend(sorted((package.parent / "av.libs").glob("libopus-*.so*")))
        found.extend(sorted((package / ".dylibs").glob("libopus*.dylib")))
    return found


def find_libopus(system: Callable[[str], str | None] = ctypes.util.find_library) -> str:
    """Name or path of the first libopus that loads: the system's, then PyAV's.

    ``system`` is the system lookup (``ctypes.util.find_library``); a library it names
    that does not load (a broken or hidden file) falls through to PyAV's copy.
    Raises ``ImportError`` listing what was tried when none loads.
    """
    candidates: list[str] = []
    named = system("opus")
    if named:
        candidates.append(named)
    candidates.extend(str(path) for path in bundled_libopus_paths())
    failures: list[str] = []
    for candidate in candidates:
        try:
            ctypes.CDLL(candidate)
        except OSError as exc:
            failures.append(f"{candidate}: {exc}")
            continue
        return candidate
    tried = "; ".join(failures) if failures else "no system libopus and none in PyAV's wheel"
    raise ImportError(f"no loadable libopus ({tried}); install libopus0 or PyAV (pip install av)")


def load_opuslib() -> ModuleType:
    """Import and return ``opuslib`` (with ``api``, ``ctl``, ``decoder``, ``encoder``).

    opuslib looks its library up with ``ctypes.util.find_library("opus")`` while
    ``opuslib.api`` is imported, so for that import the lookup answers with the path
    :func:`find_libopus` chose; it is restored at once. Idempotent.
    """
    if "opuslib.api" not in sys.modules:
        path = find_libopus()
        system = ctypes.util.find_library

        def lookup(name: str) -> str | None:
            return path if name == "opus" else system(name)

        ctypes.util.find_library = lookup
        try:
            importlib.import_module("opuslib.api")
        finally:
            ctypes.util.find_library = system
    for name in _OPUSLIB_MODULES:
        importlib.import_module(name)
    return importlib.import_module("opuslib")
