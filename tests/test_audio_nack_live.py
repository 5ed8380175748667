"""Audio NACKs from a Chromium listener at 20 % loss are answered, live on 127.0.0.1.

A Chromium page publishes (fake camera and microphone); a second one listens only
(``publish=0``) through netem's TURN relay whose downlink drops 20 % of packets at
random. Chrome NACKs Opus (Ferry's offer carries ``nack`` for it) and browsers have no
RTX for audio, so Ferry answers each NACK with the packet again, byte for byte with
the transport-wide seq it first had (``SubscriberPeer.resend_rtp``). Prints one
``AUDIO_NACK {...}`` line: Ferry's counters and Chrome's own inbound-rtp audio
figures (NACKs sent, packets lost, concealed vs received samples).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from netem.turn import TurnRelay
from signaling.app import FerryServer

from .browser import chromium, needs_chromium
from .conftest import wait_until

LISTEN_S = 10.0

# Every RTCPeerConnection the page makes, for getStats from the test.
KEEP_PCS = """(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();"""

AUDIO_INBOUND = """async () => {
  const out = {nackCount: 0, packetsLost: 0, packetsReceived: 0, concealedSamples: 0,
               totalSamplesReceived: 0, concealmentEvents: 0};
  for (const pc of window.__pcs) {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        for (const k of Object.keys(out)) out[k] += s[k] || 0;
      }
    });
  }
  return out;
}"""


@pytest.mark.browser
@needs_chromium
async def test_chromium_listener_audio_nacks_are_answered_at_20_percent_loss(server: FerryServer) -> None:
    room = "lossyaudio"
    relay = TurnRelay(
        "127.0.0.1", 0,
        profiles={"lossy": "delay 20ms|delay 20ms loss 20%"},
        users={"ear": "ear-pw"},
        allowed_peers=[f"127.0.0.1:{server.engine.port}"],
    )
    await relay.start()
    cam_url = f"{server.http_url}/?room={room}&name=mic&autojoin=1"
    ear_url = (
        f"{server.http_url}/?room={room}&name=ear&autojoin=1&publish=0&relay=1"
        f"&turn=turn:127.0.0.1:{relay.port}&turnuser=lossy:ear&turnpass=ear-pw"
    )
    try:
        async with chromium() as browser:
            cam = await (await browser.new_context()).new_page()
            await cam.goto(cam_url)

            def audio_track() -> Any:
                r = server.rooms.rooms.get(room)
                return None if r is None else next((t for t in r.router.tracks.values() if t.kind == "audio"), None)

            await wait_until(audio_track, 20.0)
            track = audio_track()
            router = server.rooms.rooms[room].router
            ear_context = await browser.new_context()
            await ear_context.add_init_script(KEEP_PCS)
            ear = await ear_context.new_page()
            await ear.goto(ear_url)

            def listener() -> Any:
                return next((p for p in router.participants.values() if p.sid != track.participant_sid), None)

            await wait_until(lambda: listener() is not None and track.sid in listener().subscriber.down_tracks, 20.0)
            sub = listener().subscriber
            down = sub.down_tracks[track.sid]
            await asyncio.sleep(LISTEN_S)
            chrome = await ear.evaluate(AUDIO_INBOUND)
            figures = {
                "ferry_audio_resent": sub.audio_resent,
                "ferry_audio_resends_skipped": down.resends_skipped,
                "ferry_nacks_received": server.engine.stats.nack_received,
                "listener_red": down.red_payload_type is not None,
                "pacer_audio_dropped": sub.pacer.dropped["audio"] if sub.pacer is not None else 0,
                "chrome": chrome,
                "concealed_pct": round(100.0 * chrome["concealedSamples"] / max(1, chrome["totalSamplesReceived"]), 2),
            }
            print("AUDIO_NACK " + json.dumps(figures))
            assert chrome["nackCount"] > 0, figures  # Chrome asks for audio ...
            assert sub.audio_resent > 0 and down.resends_skipped == 0, figures  # ... and gets it
    finally:
        await relay.close()
