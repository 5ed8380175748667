"""How a scenario run is set up (``RunOptions``) and what its participants share
(``RunContext``: URLs, tokens, the relay, the in-process server, the browser)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.chromium import CHROMIUM_ARGS
from netem.turn import TurnRelay
from qa.scenario import ParticipantSpec, Scenario


@dataclass
class RunOptions:
    """How to run (not what: that is the scenario)."""

    out_dir: Path
    url: str | None = None
    duration_s: float | None = None
    seed: int | None = None
    sample_interval_s: float = 0.5
    connect_timeout_s: float = 20.0
    chromium_path: str = "/usr/bin/chromium"
    print_fn: Callable[[str], None] | None = print
    relay_peers: list[str] | None = None  # Ferry's media addresses for --url (default: its host)



@dataclass
class RunContext:
    """What participants need from the run: URLs, tokens, relay, server, browser."""

    scenario: Scenario
    options: RunOptions
    ws_url: str = ""
    http_url: str = ""
    turn_url: str = ""
    relay: TurnRelay | None = None
    turn_passwords: dict[str, str] = field(default_factory=dict)  # participant -> TURN password
    server: Any = None
    t0: float | None = None
    api_key: str = ""
    api_secret: str = ""
    _pw: Any = None
    _browser: Any = None
    notes: list[str] = field(default_factory=list)

    def token(self, identity: str, spec: ParticipantSpec) -> str:
        from signaling.auth import mint_token

        return mint_token(self.api_key, self.api_secret, identity=identity,
                          room=self.scenario.room, now=time.time(), name=identity,
                          can_publish=bool(spec.publish), can_subscribe=spec.subscribe)

    async def browser(self) -> Any:
        if self._browser is None:
            from playwright.async_api import async_playwright

            self._pw = await async_playwright().start()
            self._browser = await self._pw.chromium.launch(
                executable_path=self.options.chromium_path, args=CHROMIUM_ARGS)
        return self._browser

    async def close_browser(self) -> None:
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
        if self._pw is not None:
            with contextlib.suppress(Exception):
                await self._pw.stop()
