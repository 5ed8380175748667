"""`ferry` command line (main(argv) → exit code) and the Prometheus metrics surface."""

from __future__ import annotations

import argparse
import io
import logging
import sys
import types
from pathlib import Path
from typing import Any

import jwt
import pytest

from signaling import cli
from signaling.auth import TokenVerifier
from signaling.config import Config
from signaling.metrics import Metrics

KEY = "APIcli"
SECRET = "c" * 48


# --- token -------------------------------------------------------------------------------


def _window(token: str) -> tuple[float, float]:
    """(nbf, exp) read without verification, so tests never consult the clock."""
    payload = jwt.decode(token, options={"verify_signature": False})
    return float(payload["nbf"]), float(payload["exp"])


def test_token_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "--room", "demo", "--identity", "alice", "--name", "Alice", "--ttl", "30m"]
    assert cli.main([*argv, "--api-key", KEY, "--api-secret", SECRET], env={}) == 0
    token = capsys.readouterr().out.strip()
    # The CLI stamps wall-clock time; verify at instants relative to the token's own claims.
    nbf, exp = _window(token)
    assert exp - nbf == 30 * 60
    claims = TokenVerifier({KEY: SECRET}).verify(token, now=nbf)
    assert (claims.identity, claims.name, claims.grants.room) == ("alice", "Alice", "demo")
    assert claims.grants.can_publish and claims.grants.can_subscribe
    assert not (claims.grants.room_admin or claims.grants.hidden)
    TokenVerifier({KEY: SECRET}).verify(token, now=claims.expires_at - 1)
    with pytest.raises(Exception, match="expired"):
        TokenVerifier({KEY: SECRET}).verify(token, now=claims.expires_at + 60)


def test_token_from_env_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"FERRY_API_KEY": KEY, "FERRY_API_SECRET": SECRET}
    argv = ["token", "--room", "r", "--identity", "rec", "--no-publish", "--no-subscribe"]
    assert cli.main([*argv, "--admin", "--record", "--hidden"], env=env) == 0
    token = capsys.readouterr().out.strip()
    claims = TokenVerifier({KEY: SECRET}).verify(token, now=_window(token)[0])
    g = claims.grants
    assert (g.can_publish, g.can_subscribe, g.room_admin, g.room_record, g.hidden) == (
        False,
        False,
        True,
        True,
        True,
    )


def test_token_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "--room", "r", "--identity", "a"], env={}) == 1
    err = capsys.readouterr().err
    assert "FERRY_API_KEY" in err and "--api-key" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["token", "--identity", "a"],
        ["token", "--room", "r", "--identity", "a", "--ttl", "soon"],
        ["token", "--room", "r", "--identity", "a", "--ttl", "0"],
        ["serve", "--http-port", "65536"],
        ["serve", "--media-port", "-1"],
        ["serve", "--http-port", "http"],
        ["serve", "--log-level", "loud"],
    ],
)
def test_usage_errors_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv, env={}) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"], env={}) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "token" in out


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("6h", 21600.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "0", "6w", "1h30m"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_duration(text)


# --- serve -------------------------------------------------------------------------------


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stand-in for signaling.app (owned by the lead) recording the Config it receives."""
    seen: list[Config] = []
    module = types.ModuleType("signaling.app")
    module.run = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "signaling.app", module)
    monkeypatch.setattr(cli, "setup_logging", lambda level, stream=None: None)
    return seen


def test_serve_builds_config(
    fake_app: list[Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("http_port: 8000\nmedia_port: 8002\nquic_port: 8001\n")
    env = {"FERRY_MEDIA_PORT": "9002", "FERRY_API_KEY": KEY, "FERRY_API_SECRET": SECRET}
    argv = ["serve", "--config", str(path), "--host", "0.0.0.0", "--quic-port", "7001"]
    argv += ["--announce-ip", "192.0.2.1", "--announce-ip", "192.0.2.2", "--log-level", "debug"]
    assert cli.main(argv, env=env) == 0
    (cfg,) = fake_app
    assert (cfg.host, cfg.http_port, cfg.quic_port, cfg.media_port) == ("0.0.0.0", 8000, 7001, 9002)
    assert cfg.announce_ips == ["192.0.2.1", "192.0.2.2"]
    assert cfg.log_level == "debug"
    assert cfg.api_keys == {KEY: SECRET}


def test_serve_without_keys_leaves_dev_mode_to_the_server(fake_app: list[Config]) -> None:
    assert cli.main(["serve"], env={}) == 0
    (cfg,) = fake_app
    assert cfg.api_keys == {}


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["serve", "--announce-ip", "localhost"], {}, "announce_ips"),
        (["serve", "--quic-port", "7882"], {}, "must differ"),
        (["serve"], {"FERRY_HTTP_PORT": "x"}, "FERRY_HTTP_PORT"),
        (["serve", "--config", "/nonexistent/ferry.yaml"], {}, "cannot read config file"),
    ],
)
def test_serve_config_errors_return_1(
    fake_app: list[Config],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    fragment: str,
) -> None:
    assert cli.main(argv, env=env) == 1
    err = capsys.readouterr().err
    assert err.startswith("ferry: error:") and fragment in err
    assert "Traceback" not in err
    assert fake_app == []


def _app_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def run(config: Config) -> None:
        raise exc

    module = types.ModuleType("signaling.app")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "signaling.app", module)
    monkeypatch.setattr(cli, "setup_logging", lambda level, stream=None: None)


def test_serve_os_error_returns_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _app_raising(monkeypatch, OSError(98, "Address already in use"))
    env = {"FERRY_API_KEY": KEY, "FERRY_API_SECRET": SECRET}
    assert cli.main(["serve"], env=env) == 1
    assert "Address already in use" in capsys.readouterr().err


def test_serve_interrupt_returns_0(monkeypatch: pytest.MonkeyPatch) -> None:
    _app_raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["serve"], env={"FERRY_API_KEY": KEY, "FERRY_API_SECRET": SECRET}) == 0


# --- plugins and logging -----------------------------------------------------------------


def _plugin(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_plugins_registered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[argparse.Namespace] = []

    def register(sub: Any) -> None:
        p = sub.add_parser("netem", help="network emulator")
        p.add_argument("--scenario")
        p.set_defaults(func=lambda args: calls.append(args) or 3)

    _plugin(monkeypatch, "netem.cli", register=register)
    _plugin(monkeypatch, "qa.cli")  # would extend the real netem command
    _plugin(monkeypatch, "recorder.cli")  # no register(): skipped quietly
    monkeypatch.setitem(sys.modules, "asr.cli", None)  # import fails: skipped quietly
    assert cli.main(["netem", "--scenario", "3g"], env={"X": "1"}) == 3
    (args,) = calls
    assert args.scenario == "3g" and args.env == {"X": "1"}
    assert cli.main(["--help"], env={}) == 0
    assert "network emulator" in capsys.readouterr().out


@pytest.mark.parametrize(
    "source",
    [
        "from netem.runner import RunOptions\n",  # a module that moved away
        "from netem.profiles import no_such_name\n",  # a name that is gone
        "def register(subparsers:\n",  # a syntax error
    ],
    ids=["missing-module", "missing-name", "syntax-error"],
)
def test_a_subcommand_module_that_fails_to_import_fails_every_command(
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import qa

    (tmp_path / "cli.py").write_text(source)
    monkeypatch.setattr(qa, "__path__", [str(tmp_path), *qa.__path__])  # shadows qa/cli.py
    monkeypatch.delitem(sys.modules, "qa.cli", raising=False)
    with pytest.raises(cli.PluginError, match="qa.cli"):
        cli.build_parser()
    argv = ["token", "--room", "r", "--identity", "a", "--api-key", KEY, "--api-secret", SECRET]
    assert cli.main(argv, env={}) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no token: the command did not run
    assert "Traceback" in captured.err
    assert "ferry: error: the subcommands of qa.cli cannot be loaded" in captured.err


def test_netem_commands_come_from_the_emulator_and_qa(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["netem", "--help"], env={}) == 0
    out = capsys.readouterr().out
    for command in ("relay", "proxy", "profiles", "run", "list"):
        assert command in out
    assert cli.main(["netem", "list"], env={}) == 0
    assert "bandwidth-cliff" in capsys.readouterr().out


def test_setup_logging_format_and_idempotence() -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        cli.setup_logging("debug", stream)
        cli.setup_logging("info", stream)
        ours = [h for h in root.handlers if h not in before_handlers]
        assert len(ours) == 1
        assert root.level == logging.INFO
        logging.getLogger("ferry.test").info("hello %s", "there")
        line = stream.getvalue().strip()
        assert line.endswith(" INFO ferry.test: hello there")
        assert ours[0].formatter is not None and ours[0].formatter._fmt == cli.LOG_FORMAT
    finally:
        for h in root.handlers[:]:
            if h not in before_handlers:
                root.removeHandler(h)
        root.setLevel(before_level)


# --- metrics (no tests/test_metrics.py in this change's file list; kept here) -------------


def _snapshot() -> dict[str, Any]:
    """Shaped like FerryServer._metrics_snapshot (media.engine snapshot + server gauges)."""
    return {
        "udp_packets_in": 1000,
        "udp_bytes_in": 1_200_000,
        "udp_packets_out": 3000,
        "udp_bytes_out": 3_600_000,
        "drops": {"no_route": 7, "mux_unknown": 2},
        "nack_received": 11,
        "rtx_sent": 9,
        "pli_sent": 4,
        "rtp_in": 900,
        "layer_switches": 3,
        "rooms": 2,
        "participants": 5,
        "ws_connections": 1,
        "tracks": 3,
        "tracks_by_kind": {"audio": 1, "video": 2},
    }


def test_metrics_render_names_and_engine_values() -> None:
    m = Metrics()
    m.signaling_error("bad_json")
    m.signaling_error("bad_json")
    calls = 0

    def stats() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return _snapshot()

    m.set_engine_stats(stats)
    assert calls == 0  # pulled only at scrape time
    lines = m.render().decode().splitlines()
    assert calls == 1
    for line in [
        "ferry_rooms 2.0",
        "ferry_participants 5.0",
        'ferry_tracks{kind="audio"} 1.0',
        'ferry_tracks{kind="video"} 2.0',
        "ferry_ws_connections 1.0",
        'ferry_signaling_errors_total{code="bad_json"} 2.0',
        "ferry_packets_in_total 1000.0",
        "ferry_bytes_in_total 1.2e+06",
        "ferry_packets_out_total 3000.0",
        "ferry_bytes_out_total 3.6e+06",
        'ferry_packet_drops_total{reason="no_route"} 7.0',
        'ferry_packet_drops_total{reason="mux_unknown"} 2.0',
        "ferry_nack_received_total 11.0",
        "ferry_rtx_sent_total 9.0",
        "ferry_pli_sent_total 4.0",
        "ferry_rtp_packets_in_total 900.0",
        "ferry_layer_switches_total 3.0",
        "ferry_rtx_missed_total 0.0",
    ]:
        assert line in lines, line


def test_metrics_preferred_key_names() -> None:
    m = Metrics()
    m.set_engine_stats(lambda: {"packets_in": 5, "packet_drops": {"late": 1}})
    lines = m.render().decode().splitlines()
    assert "ferry_packets_in_total 5.0" in lines
    assert 'ferry_packet_drops_total{reason="late"} 1.0' in lines


def test_metrics_without_engine_and_separate_registries() -> None:
    a, b = Metrics(), Metrics()  # no "duplicated timeseries": registries are per server
    a.signaling_error("internal")
    text_b = b.render().decode()
    assert "internal" not in text_b
    # Counter families exist before the engine does; gauges without data are omitted.
    assert "ferry_packets_in_total 0.0" in text_b
    assert "# TYPE ferry_packet_drops_total counter" in text_b
    assert "# TYPE ferry_tracks gauge" in text_b
    assert "ferry_rooms " not in text_b


def test_metrics_engine_callback_failure_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    m.signaling_error("internal")

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    m.set_engine_stats(broken)
    text = m.render().decode()
    assert 'ferry_signaling_errors_total{code="internal"} 1.0' in text
    assert "ferry_packets_in_total" not in text
    assert "engine stats callback failed" in caplog.text
    m.set_engine_stats(None)
    assert "ferry_packets_in_total 0.0" in m.render().decode()
