"""Headless Firefox (Debian's firefox-esr) driven over WebDriver BiDi, for browser tests.

Playwright's Firefox is its own patched build, which cannot be downloaded here; the
system Firefox speaks the W3C WebDriver BiDi protocol itself (``--remote-debugging-port``),
a WebSocket of JSON commands, so a page can be opened and scripts evaluated with
nothing but aiohttp. The profile gives fake camera and microphone without prompts.

Firefox's ICE gathers no candidate in a namespace whose only interface is loopback,
and none at all without a default route (whatever ``media.peerconnection.ice.loopback``
says), so :func:`media_address` gives the test's private namespace a veth pair with a
private address and a default route into it, and Ferry announces that address. Nothing
leaves the namespace: the other end of the pair leads nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/bin/firefox-esr"
needs_firefox = pytest.mark.skipif(
    not os.path.exists(FIREFOX),
    reason="Debian firefox-esr is not installed (apt-get install firefox-esr)",
)

PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
    "remote.prefs.recommended": True,
}
LISTENING = re.compile(rb"WebDriver BiDi listening on (ws://\S+)")
MEDIA_ADDRESS = "10.99.0.1"
_VETH = ("ferryff0", "ferryff1")


class BidiError(RuntimeError):
    pass


class FirefoxPage:
    """One browsing context: navigate, evaluate JavaScript, collect page errors."""

    def __init__(self, firefox: Firefox, context: str) -> None:
        self._ff = firefox
        self.context = context

    async def goto(self, url: str) -> None:
        await self._ff.command(
            "browsingContext.navigate", context=self.context, url=url, wait="complete"
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of `expression` (awaited if a promise), through JSON."""
        reply = await self._ff.command(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
            resultOwnership="none",
        )
        if reply.get("type") == "exception":
            details = reply.get("exceptionDetails", {})
            raise BidiError(f"{details.get('text')} in {expression!r}")
        result = reply.get("result", {})
        return None if result.get("type") != "string" else json.loads(result["value"])

    async def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll `expression` until truthy (its value), or raise TimeoutError."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout} s")
            await asyncio.sleep(0.2)

    @property
    def errors(self) -> list[str]:
        return [e for ctx, e in self._ff.errors if ctx == self.context]


class Firefox:
    """A headless Firefox process and its BiDi session."""

    def __init__(
        self, process: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        self.process = process
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.errors: list[tuple[str, str]] = []  # (context, JavaScript error text)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                future = self._pending.pop(data["id"])
                if data.get("type") == "error":
                    future.set_exception(BidiError(f"{data.get('error')}: {data.get('message')}"))
                else:
                    future.set_result(data.get("result", {}))
            elif data.get("method") == "log.entryAdded":
                entry = data["params"]
                if entry.get("type") == "javascript" and entry.get("level") == "error":
                    self.errors.append(
                        (entry.get("source", {}).get("context", ""), entry.get("text", ""))
                    )
        for future in self._pending.values():
            future.set_exception(BidiError("Firefox closed the BiDi connection"))

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        return await asyncio.wait_for(future, 60.0)

    async def new_page(self) -> FirefoxPage:
        reply = await self.command("browsingContext.create", type="tab")
        return FirefoxPage(self, reply["context"])


@contextlib.asynccontextmanager
async def firefox() -> AsyncIterator[Firefox]:
    """A headless Firefox with a fresh profile; closed (and its profile removed) on exit."""
    profile = tempfile.mkdtemp(prefix="ferry-firefox-")
    with open(os.path.join(profile, "user.js"), "w") as f:
        for key, value in PREFS.items():
            f.write(f"user_pref({json.dumps(key)}, {json.dumps(value)});\n")
    process = await asyncio.create_subprocess_exec(
        FIREFOX,
        "--headless",
        "--no-remote",
        "--profile",
        profile,
        "--remote-debugging-port",
        "0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"},
    )
    session = aiohttp.ClientSession()
    try:
        assert process.stderr is not None
        url = None
        async with asyncio.timeout(60.0):
            while url is None:
                line = await process.stderr.readline()
                if not line:
                    raise RuntimeError("firefox exited before WebDriver BiDi listened")
                if found := LISTENING.search(line):
                    url = found.group(1).decode()
        # Keep draining stderr so Firefox never blocks on a full pipe.
        drain = asyncio.create_task(_drain(process.stderr))
        ws = await session.ws_connect(url + "/session", max_msg_size=0)
        ff = Firefox(process, ws)
        await ff.command("session.new", capabilities={})
        await ff.command("session.subscribe", events=["log.entryAdded"])
        try:
            yield ff
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ff.command("browser.close"), 5.0)
            await ws.close()
            ff._reader.cancel()
            drain.cancel()
    finally:
        await session.close()
        if process.returncode is None:
            process.kill()
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


@contextlib.contextmanager
def media_address() -> Iterator[str]:
    """An address Firefox can gather a candidate on, in this private network namespace.

    Only where the namespace has nothing but ``lo`` (the test command's ``unshare
    --net``): there a veth pair is added for the test and removed after it. Anywhere
    else the test is skipped rather than touch a real machine's network.
    """
    if _links() != ["lo"]:
        pytest.skip("needs a private network namespace with only lo (run under unshare --net, as the README does)")
    ours, peer = _VETH
    commands = [
        ["ip", "link", "add", ours, "type", "veth", "peer", "name", peer],
        ["ip", "addr", "add", f"{MEDIA_ADDRESS}/24", "dev", ours],
        ["ip", "link", "set", peer, "up"],
        ["ip", "link", "set", ours, "up"],
        ["ip", "route", "add", "default", "via", "10.99.0.2", "dev", ours],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        yield MEDIA_ADDRESS
    finally:
        subprocess.run(["ip", "link", "del", ours], capture_output=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
