"""Config validation and YAML < environment < CLI precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from signaling.config import Config, ConfigError, load_config


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ferry.yaml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    cfg = load_config(None, {}, {})
    assert cfg == Config()
    assert (cfg.host, cfg.http_port, cfg.quic_port, cfg.media_port) == (
        "127.0.0.1",
        7880,
        7881,
        7882,
    )
    assert cfg.announce_ips == ["127.0.0.1"]
    assert cfg.api_keys == {}
    assert cfg.log_level == "info"


def test_default_lists_not_shared() -> None:
    a, b = Config(), Config()
    a.announce_ips.append("10.0.0.1")
    assert b.announce_ips == ["127.0.0.1"]


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        """
host: 0.0.0.0
http_port: 8000
quic_port: 8001
media_port: 8002
log_level: debug
announce_ips: [192.0.2.1]
api_keys: {filekey: filesecret}
reconnect_grace_s: 5
""",
    )
    cfg = load_config(path, {}, {})
    assert (cfg.host, cfg.http_port, cfg.quic_port, cfg.media_port) == ("0.0.0.0", 8000, 8001, 8002)
    assert cfg.api_keys == {"filekey": "filesecret"}
    assert cfg.reconnect_grace_s == 5.0 and isinstance(cfg.reconnect_grace_s, float)

    env = {
        "FERRY_HTTP_PORT": "9000",
        "FERRY_MEDIA_PORT": "9002",
        "FERRY_LOG_LEVEL": "WARNING",
        "FERRY_ANNOUNCE_IPS": "198.51.100.7, 2001:db8::1,",
        "FERRY_API_KEY": "envkey",
        "FERRY_API_SECRET": "envsecret",
        "UNRELATED": "x",
    }
    cfg = load_config(path, env, {})
    assert (cfg.host, cfg.http_port, cfg.quic_port, cfg.media_port) == ("0.0.0.0", 9000, 8001, 9002)
    assert cfg.log_level == "warning"
    assert cfg.announce_ips == ["198.51.100.7", "2001:db8::1"]
    assert cfg.api_keys == {"envkey": "envsecret"}

    cfg = load_config(
        path,
        env | {"FERRY_HOST": "10.1.1.1", "FERRY_QUIC_PORT": "9001"},
        {"http_port": 7000, "host": None, "announce_ips": ["203.0.113.5"]},
    )
    assert (cfg.host, cfg.http_port, cfg.quic_port) == ("10.1.1.1", 7000, 9001)
    assert cfg.announce_ips == ["203.0.113.5"]


def test_empty_env_values_ignored() -> None:
    assert load_config(None, {"FERRY_HOST": "", "FERRY_HTTP_PORT": ""}, {}) == Config()


def test_empty_yaml_file(tmp_path: Path) -> None:
    assert load_config(_yaml(tmp_path, "# nothing\n"), {}, {}) == Config()


def _config_error(**kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Config(**kw)
    return str(info.value)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"http_port": -1}, "http_port must be in 1..65535"),
        ({"media_port": 70000}, "media_port must be in 1..65535"),
        ({"quic_port": "7881"}, "quic_port must be an integer"),
        ({"quic_port": True}, "quic_port must be an integer"),
        ({"quic_port": 7882}, "must differ"),
        ({"host": ""}, "host must be a non-empty string"),
        ({"announce_ips": []}, "announce_ips must be a non-empty list"),
        ({"announce_ips": "127.0.0.1"}, "announce_ips must be a non-empty list"),
        ({"announce_ips": ["example.com"]}, "'example.com' is not an IPv4/IPv6 address"),
        ({"api_keys": ["k"]}, "api_keys must be a mapping"),
        ({"api_keys": {"k": ""}}, "secret must be a non-empty string"),
        ({"api_keys": {"": "s"}}, "must be a non-empty string"),
        ({"room_empty_timeout_s": -1}, "room_empty_timeout_s must be a number of seconds"),
        ({"consent_timeout_s": "30"}, "consent_timeout_s must be a number"),
        ({"log_level": "verbose"}, "debug, info, warning, error, critical"),
        ({"recordings_dir": ""}, "recordings_dir"),
        ({"max_participants_per_room": 0}, "max_participants_per_room must be >= 1"),
    ],
)
def test_invalid_values(kw: dict[str, Any], fragment: str) -> None:
    assert fragment in _config_error(**kw)


def test_http_port_may_equal_udp_port() -> None:
    Config(http_port=7882)  # TCP vs UDP: no conflict


def test_port_zero_means_any_free_port() -> None:
    cfg = Config(http_port=0, quic_port=0, media_port=0)  # how tests start servers
    assert (cfg.http_port, cfg.quic_port, cfg.media_port) == (0, 0, 0)


def test_unknown_yaml_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_yaml(tmp_path, "http_port: 1\nmedia_prot: 2\n"), {}, {})
    assert "media_prot" in str(info.value)
    assert "media_port" in str(info.value)  # lists allowed keys


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("- a\n- b\n", "mapping"), ("a: [\n", "not valid YAML"), ("http_port: x\n", "http_port")],
)
def test_bad_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_yaml(tmp_path, text), {}, {})
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"), {}, {})
    assert "cannot read config file" in str(info.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FERRY_HTTP_PORT": "http"}, "FERRY_HTTP_PORT must be an integer"),
        ({"FERRY_API_KEY": "k"}, "FERRY_API_KEY and FERRY_API_SECRET"),
        ({"FERRY_API_SECRET": "s"}, "FERRY_API_KEY and FERRY_API_SECRET"),
        ({"FERRY_ANNOUNCE_IPS": "localhost"}, "'localhost'"),
        ({"FERRY_LOG_LEVEL": "loud"}, "log_level must be one of"),
    ],
)
def test_bad_env(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env, {})
    assert fragment in str(info.value)


def test_unknown_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"bogus": 1})
    assert "bogus" in str(info.value)
