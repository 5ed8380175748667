"""A machine without Debian's libopus0: Ferry decodes Opus and ``ferry serve`` starts.

The system libopus is hidden in a private mount namespace (``/dev/null`` bound over
it), as on a fresh machine where only pip has run: opuslib must get PyAV's bundled
libopus through ``media.audio.opus_loader``, and the server must not need libopus at
all. Skipped only where ``unshare --mount`` is not permitted.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from media.audio.opus_loader import bundled_libopus_paths

ROOT = Path(__file__).resolve().parent.parent
LIB_GLOBS = ("/usr/lib/*/libopus.so*", "/usr/lib/libopus.so*", "/usr/local/lib/libopus.so*")

# Runs inside the namespace: the system libopus must be unusable, the decoder must
# load PyAV's copy, and a 440 Hz tone encoded by PyAV must decode to 440 Hz.
DECODE_SCRIPT = """
import ctypes, ctypes.util, json
import numpy as np
named = ctypes.util.find_library("opus")
try:
    ctypes.CDLL(named) if named else None
    system_usable = named is not None
except OSError:
    system_usable = False
from media.audio.opus_loader import find_libopus
from media.audio.decode_path import AudioDecodePath
from clients.lite import encode_opus_clip
path = AudioDecodePath(sample_rate=48000, channels=1)
for i, payload in enumerate(encode_opus_clip(1.0)):
    path.put(i, i * 960, payload, i * 20.0)
pcm = np.concatenate([f.pcm for f in path.pull_frames(5000.0)]).astype(float)
spectrum = np.abs(np.fft.rfft(pcm[4800:]))
peak_hz = float(np.argmax(spectrum) * 48000 / len(pcm[4800:]))
print(json.dumps({"system_usable": system_usable, "library": find_libopus(),
                  "decoded": path.stats.frames_decoded, "peak_hz": peak_hz}))
"""


def _system_libopus() -> list[str]:
    return sorted({p for pattern in LIB_GLOBS for p in glob.glob(pattern)})


def _hidden(command: str) -> list[str]:
    """``command`` (a shell line) in a mount namespace where the system libopus is /dev/null."""
    binds = " && ".join(f"mount --bind /dev/null {shlex.quote(p)}" for p in _system_libopus())
    return ["unshare", "--mount", "sh", "-c", f"{binds} && exec {command}" if binds else f"exec {command}"]


def _can_hide() -> str | None:
    """Why hiding is impossible here, or None."""
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "sh", "-c", "mount --bind /dev/null /dev/null"],
            capture_output=True, text=True, timeout=20,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"unshare unavailable: {exc}"
    if probe.returncode != 0:
        return f"unshare --mount / mount --bind not permitted: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def hiding() -> None:
    reason = _can_hide()
    if reason is not None:
        pytest.skip(reason)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_pyav_ships_a_libopus_to_fall_back_on() -> None:
    assert bundled_libopus_paths(), "PyAV's wheel no longer ships libopus: the fresh-machine fallback is gone"


def test_serving_never_imports_the_opus_decoder() -> None:
    """The forward path needs no libopus at all: importing the server loads none."""
    code = (
        "import sys, signaling.cli, signaling.app, media.engine, media.audio.red_encoder\n"
        "print(sorted(m for m in sys.modules if m.startswith('opuslib') or m.endswith('opus_decoder')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_decoder_uses_pyavs_libopus_when_the_system_has_none(hiding: None) -> None:
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(DECODE_SCRIPT)}"
    done = subprocess.run(_hidden(command), capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["system_usable"] is False  # the namespace really hid it
    assert "av.libs" in result["library"] or ".dylibs" in result["library"]
    assert result["decoded"] >= 45
    assert abs(result["peak_hz"] - 440.0) < 5.0


def test_ferry_serve_starts_without_a_system_libopus(hiding: None, tmp_path: Path) -> None:
    http = _free_port(socket.SOCK_STREAM)
    media = _free_port(socket.SOCK_DGRAM)
    quic = _free_port(socket.SOCK_DGRAM)
    while quic == media:
        quic = _free_port(socket.SOCK_DGRAM)
    serve = (
        f"{shlex.quote(sys.executable)} -m signaling.cli serve --host 127.0.0.1 "
        f"--http-port {http} --media-port {media} --quic-port {quic}"
    )
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(_hidden(serve), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        health = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2) as resp:
                    health = json.loads(resp.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        log.seek(0)
        assert health is not None and health["ok"] is True, log.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
