"""``ferry netem run`` / ``list``: scenario files, the runner and its reports.

Every built-in scenario is loaded and validated; two of them (2 aiortc clients, and the
classroom of LiteClients, which ship with Ferry: never skipped) run for real with a short
``--duration`` (the schedule is compressed with it), and an expectation that cannot hold
makes the command exit non-zero. Kept short: the machine is shared.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from qa import cli
from qa.measurement import SeqTracker
from qa.participants import lite_available
from qa.scenario import (
    Expectation,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_value,
)

REQUIRED = {"broadband", "3g", "lossy-wifi", "congested-lte", "satellite", "bandwidth-cliff",
            "classroom"}
PLOTS = ("bitrate", "estimate", "layer", "loss", "rtt", "freezes")


def test_builtin_scenarios_load_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    names = set(builtin_scenarios())
    assert REQUIRED <= names
    for name in names:
        sc = load_scenario(name)
        assert sc.description and sc.expectations and sc.participants
        short = sc.with_duration(6)
        for a, b in zip(sc.participants, short.participants, strict=True):
            assert [c.at_s * 6 / sc.duration_s for c in a.schedule] == [c.at_s for c in b.schedule]
    cliff = load_scenario("bandwidth-cliff")
    viewer = next(p for p in cliff.participants if p.name == "viewer")
    rates = [viewer.link.down.spec()] + [c.profile.down.spec() for c in viewer.schedule]
    assert ["2.5mbit" in r or "2500kbit" in r for r in rates] == [True, False, True], rates
    assert "300kbit" in rates[1]
    assert sum(p.count for p in load_scenario("classroom").participants) == 21
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in REQUIRED)


def test_expectation_and_value_parsing() -> None:
    e = Expectation.parse("subscriber.loss_after_recovery < 2%")
    assert (e.subject, e.metric, e.op, e.value) == ("subscribers", "loss_after_recovery", "<", 0.02)
    assert Expectation.parse("video.freeze_max_ms < 0.5s").value == 500.0
    e = Expectation.parse("participant bob decoded_frames > 100")
    assert (e.subject, e.metric, e.value) == ("bob", "decoded_frames", 100.0)
    e = Expectation.parse("mean(students.decoded_fps) >= 5")
    assert e.aggregate == "mean" and e.holds(5.0) and not e.holds(4.9)
    assert parse_value("300kbit", "recv_bps") == 300_000.0
    for bad in ("bob.nonsense < 1", "bob.rtt_ms < 2kbit", "bob rtt < 3", "avg(x.rtt_ms) < 1"):
        with pytest.raises(ScenarioError):
            Expectation.parse(bad)
    with pytest.raises(ScenarioError, match="no participant"):
        load_scenario({"participants": [{"name": "a"}], "expect": ["zed.rtt_ms < 1"]})
    with pytest.raises(ScenarioError, match="unknown keys"):
        load_scenario({"participants": [{"name": "a", "colour": "red"}]})
    with pytest.raises(ScenarioError, match="after the end"):
        load_scenario({"duration": 5, "participants": [
            {"name": "a", "schedule": [{"at": "6s", "link": "3g"}]}]})


def test_lite_client_is_available_and_a_broken_import_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The LiteClient ships with Ferry: its tests run rather than skip, and an import
    that breaks must fail loudly, not read as "client not installed"."""
    assert lite_available()
    broken = types.ModuleType("clients.lite")  # imports, but has no LiteClient
    monkeypatch.setitem(sys.modules, "clients.lite", broken)
    with pytest.raises(ImportError, match="LiteClient"):
        lite_available()
    monkeypatch.setitem(sys.modules, "clients.lite", None)  # module absent
    assert lite_available() is False


def test_seq_tracker_counts_rtx_recovered_packets_once() -> None:
    t = SeqTracker()
    for seq in (65534, 65535, 1, 2, 4):  # wraps; 0 and 3 lost
        t.add(7, seq)
    mark = t.snapshot()
    assert t.missing({7: 65534 + 65536 - 1}, mark) == (7, 2)
    assert t.add(7, 0)  # recovered by RTX: its first arrival
    assert not t.add(7, 0)  # duplicate
    assert t.missing({7: 65534 + 65536 - 1}, mark) == (7, 1)


def _check_report(out: Path, rc: int) -> dict:
    for name in ("report.json", "report.html", *(f"{p}.png" for p in PLOTS)):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] == (rc == 0)
    html = (out / "report.html").read_text()
    assert "bitrate.png" in html and report["scenario"] in html
    return report


def test_run_broadband_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bb"
    rc = cli.main(["run", "broadband", "--out", str(out), "--duration", "6", "--quiet"])
    report = _check_report(out, rc)
    assert rc in (0, 1)
    parts = report["participants"]
    assert set(parts) == {"alice", "bob"}
    for p in parts.values():
        assert p["connected"] == 1 and p["decoded_frames"] > 20, p
        assert p["recv_bps"] > 100_000 and len(p["series"]["recv_bps"]) == len(report["t"])
        assert p["layer_mean"] is not None  # read from the in-process Ferry
        assert p["video_holes_given_up"] == 0 and p["video_nacks_repeated"] is not None  # aiortc
    assert len(report["t"]) >= 12
    text = capsys.readouterr().out
    assert "alice" in text and "result:" in text


def test_run_classroom_with_lite_students(tmp_path: Path) -> None:
    out = tmp_path / "class"
    rc = cli.main(["run", "classroom", "--out", str(out), "--duration", "6", "--quiet"])
    report = _check_report(out, rc)
    parts = report["participants"]
    assert len(parts) == 21
    students = [p for n, p in parts.items() if n != "teacher"]
    assert all(p["client"] == "lite" and p["connected"] == 1 for p in students)
    assert sum(p["decoded_frames"] > 0 for p in students) >= 18
    lossy = [parts[f"wifi{i}"] for i in range(1, 7)]
    assert max(p["loss_before_recovery"] for p in lossy) > 0.005  # the profile really applied


def test_impossible_expectation_fails_the_run(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "impossible.yaml"
    scenario.write_text(
        "name: impossible\n"
        "description: an expectation that cannot hold\n"
        "duration: 3s\n"
        "participants:\n"
        "  - {name: talker, client: ferry, publish: [audio], subscribe: false}\n"
        "  - {name: ear, client: ferry, publish: [], link: 'delay 5ms'}\n"
        "expect:\n"
        "  - 'ear.loss_before_recovery < 0%'\n"
        "  - 'ear.audio_frames > 10'\n"
    )
    out = tmp_path / "imp"
    rc = cli.main(["run", str(scenario), "--out", str(out), "--quiet"])
    assert rc == 1
    report = _check_report(out, rc)
    verdicts = {e["expect"]: e["ok"] for e in report["expectations"]}
    assert verdicts["ear.loss_before_recovery < 0%"] is False
    assert verdicts["ear.audio_frames > 10"] is True
    assert "ear.loss_before_recovery < 0%" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2


def test_capacity_step_report_plots_estimate_and_layer(tmp_path: Path) -> None:
    """A viewer's link steps 2.5 -> 0.3 -> 2.5 Mbit/s: the report's series (and plots)
    show Ferry's estimate and the forwarded layer follow."""
    scenario = tmp_path / "step.yaml"
    scenario.write_text(
        "name: step\n"
        "duration: 14s\n"
        "seed: 3\n"
        "participants:\n"
        "  - {name: presenter, client: lite, publish: [audio, video], subscribe: false}\n"
        "  - name: viewer\n"
        "    client: lite\n"
        "    publish: []\n"
        "    link: 'delay 20ms rate 2500kbit limit 64kb'\n"
        "    schedule:\n"
        "      - {at: 5s, link: 'delay 20ms rate 300kbit limit 32kb'}\n"
        "      - {at: 9s, link: 'delay 20ms rate 2500kbit limit 64kb'}\n"
    )
    out = tmp_path / "step"
    rc = cli.main(["run", str(scenario), "--out", str(out), "--quiet"])
    report = _check_report(out, rc)
    assert (out / "estimate.png").stat().st_size > 0 and (out / "layer.png").stat().st_size > 0
    t = report["t"]
    series = report["participants"]["viewer"]["series"]

    def during(key: str, start: float, end: float) -> list[float]:
        return [v for ts, v in zip(t, series[key], strict=True) if start <= ts < end and v is not None]

    before, low = during("estimate_bps", 3.0, 5.0), during("estimate_bps", 6.5, 9.0)
    assert before and low and max(low) < 300_000 < min(before), (before, low)
    assert max(during("layer", 3.0, 5.0)) == 2
    assert max(during("layer", 6.5, 9.0)) < 2
    # the LiteClient presenter stamps its frames live, so the viewer has glass-to-glass
    viewer = report["participants"]["viewer"]
    assert viewer["latency_frames"] > 5 * 14, viewer["latency_frames"]
    assert 0 < viewer["latency_p50_ms"] < 150.0, viewer["latency_p50_ms"]
    # ... and its audio (packets counted as they first arrive) is reported as such
    assert viewer["remote_audio_tracks"] == 1 and viewer["audio_frames"] > 40 * 10
    assert viewer["audio_loss_after_recovery"] is not None and viewer["audio_concealed"] is not None
