"""CI: start ``ferry serve`` (default ports), wait for /healthz, stop it with SIGINT.

.ci/run runs this with the system libopus hidden, to prove the README's first command
works with only what pip installs. Exits 0 when /healthz answered ``ok`` within 60 s.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

URL = "http://127.0.0.1:7880/healthz"


def main() -> int:
    server = subprocess.Popen(["ferry", "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ok = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(URL, timeout=2) as resp:
                ok = json.loads(resp.read()).get("ok") is True
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
    try:
        output, _ = server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        output, _ = server.communicate()
    print(output[-2000:] if not ok else f"ferry serve: {URL} ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
