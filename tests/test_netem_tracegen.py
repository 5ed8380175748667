"""Ferry's own synthetic LTE traces: deterministic, shipped unchanged, LTE-like, usable.

The built-in ``congested-lte`` profile runs on ``netem/traces/ferry-lte.*``, which
``netem.tracegen`` generates; these tests pin the files to the generator, check the
traces have the fades and outages they claim, and that every built-in scenario and
profile resolves its files from the package alone (no ``../shared``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netem.link import LinkConfig
from netem.profiles import builtin_profiles, get_profile
from netem.rate import MahimahiTrace
from netem.tracegen import SHIPPED, capacity_steps, generate, opportunities, render, shipped_path
from qa import cli
from qa.scenario import builtin_scenarios, describe_builtin, load_scenario


@pytest.mark.parametrize("trace", SHIPPED, ids=lambda t: t.name)
def test_shipped_trace_is_exactly_what_the_generator_makes(trace) -> None:
    path = shipped_path(trace.name)
    assert path.read_text(encoding="ascii") == render(trace), (
        f"{path} differs from netem.tracegen's output: run python -m netem.tracegen")


def test_generator_is_deterministic_and_seeded() -> None:
    trace = SHIPPED[0]
    assert capacity_steps(trace.model, trace.seed, 20) == capacity_steps(trace.model, trace.seed, 20)
    assert capacity_steps(trace.model, trace.seed, 20) != capacity_steps(trace.model, trace.seed + 1, 20)


def test_opportunities_carry_the_rate_and_end_on_the_period() -> None:
    lines = opportunities([12e6] * 10)  # 12 Mbit/s = one 1500-byte opportunity per ms
    assert lines == list(range(1, 1001))
    idle = opportunities([0.0] * 5)  # no capacity at all: just the period marker
    assert idle == [500]
    MahimahiTrace(tuple(idle))  # still a valid trace


@pytest.mark.parametrize("trace", SHIPPED, ids=lambda t: t.name)
def test_shipped_trace_swings_fades_and_drops_out(trace) -> None:
    parsed = generate(trace)
    assert parsed.period_ms == trace.seconds * 1000
    ts = np.array(parsed.timestamps[:-1])
    per_s = np.bincount(ts // 1000, minlength=trace.seconds) * 1500 * 8
    assert 0.7 * trace.model.mean_bps < parsed.mean_bps() < 1.3 * trace.model.mean_bps
    assert per_s.max() > 1.4 * parsed.mean_bps()  # capacity swings
    assert per_s.min() < 0.3 * parsed.mean_bps()  # a fade deep enough to hurt
    per_200ms = np.bincount(ts // 200, minlength=trace.seconds * 5)
    assert (per_200ms == 0).sum() >= 1  # at least one outage


def test_trace_keyword_finds_a_shipped_trace_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = LinkConfig.parse("trace ferry-lte.down delay 30ms")
    assert isinstance(cfg.rate, MahimahiTrace)
    assert Path(str(cfg.rate.path)) == shipped_path("ferry-lte.down")
    with pytest.raises(OSError):
        LinkConfig.parse("trace no-such-trace.down")


def test_every_builtin_scenario_and_profile_runs_without_shared_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-traces"
    empty.mkdir()
    monkeypatch.setenv("FERRY_TRACES_DIR", str(empty))
    assert cli.main(["list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert listed == set(builtin_scenarios()) == {name for name, _ in describe_builtin()}
    for name in sorted(listed):
        scenario = load_scenario(name)
        for participant in scenario.participants:
            for profile in [participant.link, *(c.profile for c in participant.schedule)]:
                for cfg in (profile.up, profile.down):
                    path = getattr(cfg.rate, "path", None)
                    assert path is None or Path(path).is_file(), (name, path)
                    assert empty not in Path(path or "/").parents
    lte = get_profile("congested-lte")
    assert isinstance(lte.down.rate, MahimahiTrace) and isinstance(lte.up.rate, MahimahiTrace)
    assert "congested-lte" in builtin_profiles()
    assert "verizon-lte" not in builtin_profiles()  # the real trace needs FERRY_TRACES_DIR
