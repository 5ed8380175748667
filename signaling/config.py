"""Server configuration: one validated dataclass, loaded from YAML < environment < CLI.

Validation lives in ``Config.__post_init__`` (STYLE §8) so every way of building a config
(file, env, tests constructing it directly) gets the same checks, and errors list the
allowed values instead of failing later inside a socket call.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CAPTION_MODES", "LOG_LEVELS", "Config", "ConfigError", "is_loopback_host", "load_config"]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
CAPTION_MODES = ("whisper", "vosk", "off")

_ORIGIN = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?$|^https?://\[[0-9a-fA-F:.]+\](:\d{1,5})?$")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` names and loopback IP literals (what only this machine reaches)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ConfigError(ValueError):
    """Invalid configuration; the message is meant for the operator, without a traceback."""


@dataclass
class Config:
    """Everything ``ferry serve`` needs. Defaults match DESIGN §6.

    A port of 0 asks the OS for a free one; tests use it to run many servers side by side.
    """

    host: str = "127.0.0.1"
    http_port: int = 7880
    quic_port: int = 7881
    # Certificate and key (PEM) for the QUIC listener; unset: a generated ECDSA
    # certificate valid under 14 days, rotated, pinned by pages via /api/webtransport.
    quic_cert_file: str | None = None
    quic_key_file: str | None = None
    media_port: int = 7882
    # Addresses advertised in ICE candidates (what clients dial), not the bind address.
    announce_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # api key -> secret. Empty means "generate and print a dev key at start".
    api_keys: dict[str, str] = field(default_factory=dict)
    room_empty_timeout_s: float = 20.0
    reconnect_grace_s: float = 15.0
    consent_timeout_s: float = 30.0
    log_level: str = "info"
    recordings_dir: str = "recordings"
    # Room message history (SQLite, messages.db); unset: "data" beside recordings_dir.
    data_dir: str | None = None
    # Reliable room messages kept per room, by count and by age (older ones are deleted).
    messages_max_per_room: int = 10000
    messages_max_age_s: float = 86400.0
    # Audit log (JSONL, one file per UTC day); unset: "audit" under data_dir.
    audit_dir: str | None = None
    # Webhook endpoints: [{url, api_key}] (api_key: which key signs; default the first).
    webhooks: list[dict[str, str]] = field(default_factory=list)
    # Rooms recorded from their creation on, by name; "*" records every room.
    auto_record_rooms: list[str] = field(default_factory=list)
    max_participants_per_room: int = 200
    # Generated dev keys (no api_keys) on a non-loopback bind expose /api/dev-token, which
    # mints a token for any identity, to the network: only when asked for (`--dev`).
    allow_dev_keys: bool = False
    # Browser origins allowed on /ws besides the server's own host and loopback pages
    # ("https://meet.example.com"; "*" allows any). Clients without Origin are not browsers.
    allowed_origins: list[str] = field(default_factory=list)
    # WebSocket connections in total and per remote address (0: no per-address cap).
    max_connections: int = 2000
    max_connections_per_ip: int = 100
    # Networks the per-address cap does not apply to: a reverse proxy on this host makes
    # every client look like 127.0.0.1 (the total cap still applies).
    per_ip_exempt: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # A socket that has not joined a room this long after connecting is closed.
    join_timeout_s: float = 10.0
    # A connection must complete its request headers (and an idle keep-alive connection
    # send its next request) within this time.
    http_header_timeout_s: float = 10.0
    # Messages queued toward one client that does not read; beyond it the socket is aborted.
    ws_send_queue_limit: int = 1000
    # SIGTERM/SIGINT: time allowed for telling clients, finishing recordings, closing.
    shutdown_timeout_s: float = 10.0
    # Tracks one participant may publish at once (each is an m-line in every viewer's SDP).
    max_tracks_per_participant: int = 16
    # A subscriber offer without a usable answer after this long is sent again.
    subscriber_answer_timeout_s: float = 15.0
    # Live captions: the default of every room ("whisper", "vosk" or "off"); a room may
    # switch (set_captions). Whisper runs the bundled tiny.en unless whisper_model names
    # a CTranslate2 Whisper folder; vosk needs vosk_model (a Vosk model folder).
    captions: str = "whisper"
    whisper_model: str | None = None
    vosk_model: str | None = None
    captions_language: str = "en"
    # Recognizers running at once, over every room (each is a worker thread).
    captions_max_concurrent: int = 4

    def __post_init__(self) -> None:
        self._check_str("host")
        for name in ("http_port", "quic_port", "media_port"):
            value = self._check_int(name)
            if not 0 <= value <= 65535:
                raise ConfigError(
                    f"{name} must be in 1..65535 (or 0 for any free port), got {value}"
                )
        if self.quic_port == self.media_port != 0:
            # Both are UDP on the same host; HTTP is TCP so it may share a number.
            raise ConfigError(
                f"quic_port and media_port are both UDP and must differ (both {self.media_port})"
            )
        self._check_announce_ips()
        self._check_api_keys()
        for name in ("room_empty_timeout_s", "reconnect_grace_s", "consent_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
            setattr(self, name, float(value))
        level = self._check_str("log_level").lower()
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        self.log_level = level
        self._check_str("recordings_dir")
        self._check_messages()
        self._check_quic_cert()
        self._check_auto_record_rooms()
        if self._check_int("max_participants_per_room") < 1:
            raise ConfigError(
                f"max_participants_per_room must be >= 1, got {self.max_participants_per_room}"
            )
        if not isinstance(self.allow_dev_keys, bool):
            raise ConfigError(f"allow_dev_keys must be true or false, got {self.allow_dev_keys!r}")
        self._check_allowed_origins()
        for name in ("max_connections", "ws_send_queue_limit"):
            if self._check_int(name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self._check_int("max_connections_per_ip") < 0:
            raise ConfigError(
                f"max_connections_per_ip must be >= 0 (0: no cap), got {self.max_connections_per_ip}"
            )
        self._check_per_ip_exempt()
        if self._check_int("max_tracks_per_participant") < 1:
            raise ConfigError(
                f"max_tracks_per_participant must be >= 1, got {self.max_tracks_per_participant}"
            )
        self._check_captions()
        for name in ("join_timeout_s", "http_header_timeout_s", "shutdown_timeout_s", "subscriber_answer_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
            setattr(self, name, float(value))

    def _check_messages(self) -> None:
        if self.data_dir is None:
            self.data_dir = str(Path(self.recordings_dir).parent / "data")
        self._check_str("data_dir")
        if self.audit_dir is None:
            self.audit_dir = str(Path(str(self.data_dir)) / "audit")
        self._check_str("audit_dir")
        self._check_webhooks()
        if self._check_int("messages_max_per_room") < 1:
            raise ConfigError(f"messages_max_per_room must be >= 1, got {self.messages_max_per_room}")
        value = self.messages_max_age_s
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"messages_max_age_s must be a number of seconds > 0, got {value!r}")
        self.messages_max_age_s = float(value)

    def _check_webhooks(self) -> None:
        hooks = self.webhooks
        if not isinstance(hooks, list):
            raise ConfigError(f"webhooks must be a list of {{url, api_key}}, got {hooks!r}")
        for hook in hooks:
            if not isinstance(hook, dict) or set(hook) - {"url", "api_key"}:
                raise ConfigError(f"webhooks entry {hook!r} must be a mapping with url and optional api_key")
            url = hook.get("url")
            if not isinstance(url, str) or not re.match(r"^https?://[^\s]+$", url):
                raise ConfigError(f"webhooks entry url {url!r} must be an http(s) URL")
            key = hook.get("api_key")
            if key is not None and (not isinstance(key, str) or (self.api_keys and key not in self.api_keys)):
                raise ConfigError(f"webhooks entry api_key {key!r} is not one of api_keys")

    def _check_captions(self) -> None:
        if self.captions not in CAPTION_MODES:
            raise ConfigError(f"captions must be one of {', '.join(CAPTION_MODES)}, got {self.captions!r}")
        for name in ("whisper_model", "vosk_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a model folder path, got {value!r}")
        self._check_str("captions_language")
        if self._check_int("captions_max_concurrent") < 1:
            raise ConfigError(f"captions_max_concurrent must be >= 1, got {self.captions_max_concurrent}")

    def _check_quic_cert(self) -> None:
        if (self.quic_cert_file is None) != (self.quic_key_file is None):
            raise ConfigError("quic_cert_file and quic_key_file go together: set both or neither")

    def _check_str(self, name: str) -> str:
        value = getattr(self, name)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        return value

    def _check_int(self, name: str) -> int:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value

    def _check_announce_ips(self) -> None:
        ips = self.announce_ips
        if not isinstance(ips, list) or not ips:
            raise ConfigError(f"announce_ips must be a non-empty list of IP addresses, got {ips!r}")
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(
                    f"announce_ips entry {ip!r} is not an IPv4/IPv6 address "
                    "(ICE candidates need literal addresses, not host names)"
                ) from None

    def _check_auto_record_rooms(self) -> None:
        rooms = self.auto_record_rooms
        if not isinstance(rooms, list) or not all(isinstance(r, str) and r for r in rooms):
            raise ConfigError(f"auto_record_rooms must be a list of room names (or \"*\" for all), got {rooms!r}")

    def _check_per_ip_exempt(self) -> None:
        nets = self.per_ip_exempt
        if not isinstance(nets, list):
            raise ConfigError(f"per_ip_exempt must be a list of networks, got {nets!r}")
        for net in nets:
            try:
                ipaddress.ip_network(net)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"per_ip_exempt entry {net!r} is not a network like 10.0.0.0/8 or ::1/128"
                ) from None

    def _check_allowed_origins(self) -> None:
        origins = self.allowed_origins
        if not isinstance(origins, list):
            raise ConfigError(f"allowed_origins must be a list of origins, got {origins!r}")
        for origin in origins:
            if origin == "*":
                continue
            if not isinstance(origin, str) or not _ORIGIN.match(origin):
                raise ConfigError(
                    f"allowed_origins entry {origin!r} is not an origin like "
                    "https://meet.example.com (scheme://host[:port], no path) or *"
                )
        self.allowed_origins = [o.lower() for o in origins]

    def _check_api_keys(self) -> None:
        keys = self.api_keys
        if not isinstance(keys, dict):
            raise ConfigError(f"api_keys must be a mapping of api key to secret, got {keys!r}")
        for key, secret in keys.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"api_keys: key {key!r} must be a non-empty string")
            if not isinstance(secret, str) or not secret:
                raise ConfigError(f"api_keys[{key!r}]: secret must be a non-empty string")


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Config))


def _load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at top level")
    unknown = sorted(str(k) for k in data if k not in FIELD_NAMES)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(FIELD_NAMES))}"
        )
    return data


def _env_int(env: Mapping[str, str], var: str) -> int:
    raw = env[var]
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{var} must be an integer, got {raw!r}") from None


_ENV_STR = {
    "FERRY_HOST": "host",
    "FERRY_LOG_LEVEL": "log_level",
    "FERRY_RECORDINGS_DIR": "recordings_dir",
    "FERRY_DATA_DIR": "data_dir",
    "FERRY_AUDIT_DIR": "audit_dir",
    "FERRY_CAPTIONS": "captions",
    "FERRY_QUIC_CERT_FILE": "quic_cert_file",
    "FERRY_QUIC_KEY_FILE": "quic_key_file",
}
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_ENV_INT = {
    "FERRY_HTTP_PORT": "http_port",
    "FERRY_QUIC_PORT": "quic_port",
    "FERRY_MEDIA_PORT": "media_port",
}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, name in _ENV_STR.items():
        if env.get(var):
            out[name] = env[var].strip()
    for var, name in _ENV_INT.items():
        if env.get(var):
            out[name] = _env_int(env, var)
    if env.get("FERRY_ANNOUNCE_IPS"):
        out["announce_ips"] = [p.strip() for p in env["FERRY_ANNOUNCE_IPS"].split(",") if p.strip()]
    if env.get("FERRY_ALLOWED_ORIGINS"):
        out["allowed_origins"] = [
            p.strip() for p in env["FERRY_ALLOWED_ORIGINS"].split(",") if p.strip()
        ]
    if env.get("FERRY_ALLOW_DEV_KEYS"):
        raw = env["FERRY_ALLOW_DEV_KEYS"].strip().lower()
        if raw not in _BOOL_WORDS:
            raise ConfigError(f"FERRY_ALLOW_DEV_KEYS must be true or false, got {raw!r}")
        out["allow_dev_keys"] = _BOOL_WORDS[raw]
    if env.get("FERRY_WEBHOOKS"):  # comma-separated URLs, signed with the first api key
        out["webhooks"] = [{"url": u.strip()} for u in env["FERRY_WEBHOOKS"].split(",") if u.strip()]
    key, secret = env.get("FERRY_API_KEY"), env.get("FERRY_API_SECRET")
    if bool(key) != bool(secret):
        raise ConfigError("FERRY_API_KEY and FERRY_API_SECRET must be set together")
    if key and secret:
        # Replaces (does not extend) file keys: the environment wins, as for every field.
        out["api_keys"] = {key: secret}
    return out


def load_config(
    path: str | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a :class:`Config` with precedence defaults < YAML file < ``env`` < ``overrides``.

    ``env`` is passed in (normally ``os.environ``) so tests never touch the process
    environment. ``overrides`` entries whose value is ``None`` are ignored, so argparse
    namespaces can be passed through without filtering unset options. Raises
    :class:`ConfigError`.
    """
    merged: dict[str, Any] = {}
    if path is not None:
        merged.update(_load_yaml(path))
    merged.update(_from_env(env))
    for name, value in (overrides or {}).items():
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown config override {name!r}")
        if value is not None:
            merged[name] = value
    return Config(**merged)
