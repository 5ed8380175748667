"""Audio-only call at 20 % random downlink loss: what a Chromium and an aiortc listener hear.

Live on 127.0.0.1. A Chromium page publishes its microphone alone (``video=0``); a
Chromium listener (``publish=0``) and an aiortc listener (``FerryClient``) each reach
Ferry through netem's TURN relay, whose downlink drops 20 % of packets at random.

* Chromium NACKs Opus and negotiates RED, so Ferry resends what it asks for and sends
  RED with two redundant blocks once its NACKs show loss (its receiver reports count
  repaired packets as received). What it heard is read from Chrome's
  own inbound-rtp stats, polled in the page every 50 ms: ``concealedSamples`` over
  ``totalSamplesReceived`` for the share concealed, and the longest concealment run:
  consecutive polls in which (nearly) every sample played out was concealed, plus
  the concealed samples of the polls either side (an upper bound, +-50 ms).
* aiortc neither NACKs audio nor knows RED, so Ferry sends it each Opus packet again
  (``DownTrack`` audio duplicates). aiortc conceals nothing: a frame missing after
  its jitter buffer is silence. Its decoded frames' timestamps give the missing share
  and the longest gap (timestamp step minus one 20 ms frame).

Prints one ``AUDIO_LOSS {...}`` line with both listeners' figures.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from clients.client import FerryClient
from netem.turn import TurnRelay
from signaling.app import FerryServer

from .browser import chromium, needs_chromium
from .conftest import wait_until

LISTEN_S = 12.0
MAX_CONCEALED = 0.05
MAX_GAP_MS = 200.0
OPUS_FRAME = 960  # 20 ms at 48 kHz
LOSSY = "delay 20ms|delay 20ms loss 20%"
TURN_USERS = {"ear": "ear-pw", "py": "py-pw"}

# Every RTCPeerConnection the page makes, and its inbound audio figures every 50 ms.
POLL_AUDIO = """(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.__audio = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
  setInterval(async () => {
    let row = null;
    for (const pc of window.__pcs) {
      (await pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio" && s.totalSamplesReceived) {
          row = row || {t: performance.now(), concealed: 0, total: 0, events: 0, nacks: 0, lost: 0, received: 0};
          row.concealed += s.concealedSamples || 0;
          row.total += s.totalSamplesReceived || 0;
          row.events += s.concealmentEvents || 0;
          row.nacks += s.nackCount || 0;
          row.lost += s.packetsLost || 0;
          row.received += s.packetsReceived || 0;
        }
      });
    }
    if (row) window.__audio.push(row);
  }, 50);
})();"""


def longest_concealment_ms(rows: list[dict[str, float]], rate: int = 48_000) -> float:
    """Upper bound of the longest concealment run in cumulative getStats polls.

    A poll interval is wholly concealed when all but 10 ms of its played samples were
    concealed; a run is a streak of those plus the concealed samples of the interval
    on each side (they may touch the streak). A lone partial interval counts its own
    concealed samples, which may be several short events summed: an overestimate.
    """
    deltas = []
    for a, b in zip(rows, rows[1:], strict=False):
        total, concealed = b["total"] - a["total"], b["concealed"] - a["concealed"]
        if total > 0:
            deltas.append((concealed, concealed >= total - rate // 100))
    longest = 0.0
    run = 0.0
    before = 0.0  # concealed samples of the partial interval before the streak
    for concealed, full in deltas:
        if full:
            run += concealed
            continue
        longest = max(longest, before + run + concealed)
        run, before = 0.0, concealed
    longest = max(longest, before + run)
    return 1000.0 * longest / rate


def frame_gaps(pts: list[int]) -> tuple[int, float]:
    """Missing 20 ms frames and the longest gap (ms) between decoded Opus frames."""
    missing, longest = 0, 0
    for a, b in zip(pts, pts[1:], strict=False):
        gap = b - a - OPUS_FRAME
        if gap > 0:
            missing += gap // OPUS_FRAME
            longest = max(longest, gap)
    return missing, 1000.0 * longest / 48_000


def test_concealment_runs_are_read_from_polls() -> None:
    rows = [{"total": 4800.0 * i, "concealed": 0.0} for i in range(3)]
    rows += [{"total": 4800.0 * i, "concealed": 4800.0 * (i - 2) + 960} for i in range(3, 6)]  # 3 full polls
    rows += [{"total": 4800.0 * 6, "concealed": 4800.0 * 3 + 960}]
    assert longest_concealment_ms(rows) == pytest.approx(320.0)  # 20 + 300 ms
    assert frame_gaps([0, 960, 2880, 3840, 3840 + 960 * 5]) == (5, 80.0)


@pytest.mark.browser
@needs_chromium
async def test_audio_only_call_at_20_percent_loss_has_no_gap_for_chromium_or_aiortc(server: FerryServer) -> None:
    room = "lossyaudioonly"
    relay = TurnRelay(
        "127.0.0.1", 0, profiles={"lossy": LOSSY}, users=TURN_USERS,
        allowed_peers=[f"127.0.0.1:{server.engine.port}"],
    )
    await relay.start()
    turn = f"turn:127.0.0.1:{relay.port}"
    mic_url = f"{server.http_url}/?room={room}&name=mic&autojoin=1&video=0"
    ear_url = (
        f"{server.http_url}/?room={room}&name=ear&autojoin=1&publish=0&relay=1"
        f"&turn={turn}&turnuser=lossy:ear&turnpass=ear-pw"
    )
    py = FerryClient(turn_url=turn, turn_username="lossy:py", turn_password="py-pw", relay_only=True,
                     connect_timeout=15)
    pts: list[int] = []
    try:
        async with chromium() as browser:
            mic = await (await browser.new_context()).new_page()
            await mic.goto(mic_url)

            def tracks() -> list[Any]:
                r = server.rooms.rooms.get(room)
                return [] if r is None else list(r.router.tracks.values())

            await wait_until(lambda: tracks(), 20.0)
            assert [t.kind for t in tracks()] == ["audio"]  # audio only
            track = tracks()[0]
            ear_context = await browser.new_context()
            await ear_context.add_init_script(POLL_AUDIO)
            ear = await ear_context.new_page()
            await ear.goto(ear_url)
            await py.connect(server.ws_url)
            await py.join(server.token(room, "py"))
            await wait_until(lambda: py.sink_for(track.participant_sid, "audio") is not None, 20.0)
            sink = py.sink_for(track.participant_sid, "audio")
            assert sink is not None
            sink.on_frame = lambda frame: pts.append(frame.pts)
            router = server.rooms.rooms[room].router

            def listening() -> list[Any]:
                return [
                    p.subscriber for p in router.participants.values()
                    if p.sid != track.participant_sid and track.sid in p.subscriber.down_tracks
                ]

            await wait_until(lambda: len(listening()) == 2, 20.0)
            start = time.monotonic()
            await wait_until(lambda: len(pts) > 0, 10.0)
            await asyncio.sleep(max(0.0, LISTEN_S - (time.monotonic() - start)))
            rows = await ear.evaluate("window.__audio")
        assert rows, "Chromium listener played no audio"
        last = rows[-1]
        missing, py_gap = frame_gaps(pts)
        figures = {
            "chromium": {
                "concealed_pct": round(100.0 * last["concealed"] / max(1.0, last["total"]), 2),
                "longest_gap_ms": round(longest_concealment_ms(rows), 1),
                "concealment_events": last["events"],
                "nacks": last["nacks"], "packets_lost": last["lost"], "packets_received": last["received"],
                "seconds": round(last["total"] / 48_000, 1),
            },
            "aiortc": {
                "concealed_pct": round(100.0 * missing / max(1, missing + len(pts)), 2),
                "longest_gap_ms": round(py_gap, 1),
                "frames": len(pts), "missing": missing,
            },
            "ferry": [
                {"red": d.red_payload_type is not None, "resent": sub.audio_resent,
                 "duplicates": getattr(d, "audio_duplicates", 0)}
                for sub in listening() for d in [sub.down_tracks[track.sid]]
            ],
        }
        print("AUDIO_LOSS " + json.dumps(figures))
        chrome, aiortc = figures["chromium"], figures["aiortc"]
        assert chrome["seconds"] >= LISTEN_S - 3 and chrome["nacks"] > 0, figures  # it played, through loss
        assert chrome["concealed_pct"] < 100 * MAX_CONCEALED, figures
        assert chrome["longest_gap_ms"] <= MAX_GAP_MS, figures
        assert len(pts) + missing >= (LISTEN_S - 3) * 50, figures
        assert aiortc["concealed_pct"] < 100 * MAX_CONCEALED, figures
        assert aiortc["longest_gap_ms"] <= MAX_GAP_MS, figures
    finally:
        await py.leave()
        await relay.close()
