"""Named link profiles: a pair of ``LinkConfig`` (up = client->network, down).

Why pairs: real access links are asymmetric, and the TURN relay applies ``up``
to what a client sends and ``down`` to what it receives, so a profile's RTT is
``up.delay + down.delay``. Profiles are immutable values; a runner changes a
profile at run time by handing a new value to ``TurnRelay.set_profile`` (or
``Link.set_config``), which keeps packets in flight.

``congested-lte`` runs on the synthetic LTE traces the package ships
(``netem/traces/ferry-lte.*``, made by ``netem.tracegen``), so every built-in
profile and scenario works from an installed package. ``verizon-lte`` reads the real
Mahimahi trace from ``../shared/data/traces`` (GPL-3+ data, never copied into the
repo; override the directory with ``FERRY_TRACES_DIR``) and exists only where that
directory does. Traces are loaded lazily, when a profile is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netem.link import LinkConfig
from netem.tracegen import shipped_path


def traces_dir() -> Path:
    """Where the Mahimahi traces live (``$FERRY_TRACES_DIR`` or ``../shared/data/traces``)."""
    env = os.environ.get("FERRY_TRACES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"


@dataclass(frozen=True)
class Profile:
    """What a relay allocation or proxy applies: one config per direction."""

    name: str
    up: LinkConfig = field(default_factory=LinkConfig)
    down: LinkConfig = field(default_factory=LinkConfig)
    description: str = ""

    @classmethod
    def coerce(cls, name: str, value: Any) -> Profile:
        """Accept a Profile, one config/spec for both directions, ``"UP|DOWN"``,
        or a dict ``{"up": ..., "down": ..., "description": ...}``."""
        if isinstance(value, Profile):
            return value if value.name == name else Profile(name, value.up, value.down,
                                                            value.description)
        if isinstance(value, str) and "|" in value:
            up, down = value.split("|", 1)
            return cls(name, LinkConfig.parse(up), LinkConfig.parse(down))
        if isinstance(value, Mapping) and ("up" in value or "down" in value):
            return cls(
                name,
                LinkConfig.coerce(value.get("up")),
                LinkConfig.coerce(value.get("down")),
                str(value.get("description", "")),
            )
        cfg = LinkConfig.coerce(value)
        return cls(name, cfg, cfg)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up.spec(), "down": self.down.spec(),
                "description": self.description}


def parse_profile_arg(arg: str) -> Profile:
    """``NAME=SPEC`` or ``NAME=UP_SPEC|DOWN_SPEC`` (the CLI's ``--profile``)."""
    name, sep, spec = arg.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"bad profile {arg!r} (use NAME=SPEC or NAME=UP|DOWN)")
    return Profile.coerce(name.strip(), spec)


def _trace_config(file: str, extra: str) -> LinkConfig:
    shipped = shipped_path(file)
    path = shipped if shipped.exists() else traces_dir() / file
    if not path.exists():
        raise FileNotFoundError(f"trace {path} not found (set FERRY_TRACES_DIR)")
    return LinkConfig.parse(f"trace {path} {extra}")


_SPECS: dict[str, tuple[str, str, str]] = {
    "unimpaired": ("", "", "no impairment"),
    "broadband": (
        "delay 10ms 2ms rate 20mbit limit 256kb",
        "delay 10ms 2ms rate 100mbit limit 1mb",
        "cable/fibre: 20 ms RTT, 20/100 Mbit/s",
    ),
    "3g": (
        "delay 75ms 15ms rate 768kbit loss 0.5% limit 64kb",
        "delay 75ms 15ms rate 2mbit loss 0.5% limit 128kb",
        "HSPA-like: 150 ms RTT, 0.77/2 Mbit/s, 0.5% loss",
    ),
    "lossy-wifi": (
        "delay 5ms 3ms rate 20mbit loss gemodel 2% 30% 60% 0.1% limit 256kb",
        "delay 5ms 3ms rate 30mbit loss gemodel 2% 30% 60% 0.1% limit 256kb",
        "busy Wi-Fi: bursty Gilbert-Elliott loss (~4%, mean burst ~3 packets)",
    ),
    "satellite": (
        "delay 300ms 5ms rate 2mbit loss 0.5% limit 256kb",
        "delay 300ms 5ms rate 10mbit loss 0.5% limit 1mb",
        "GEO satellite: 600 ms RTT",
    ),
    "cliff": (
        "delay 20ms steps 0s:2mbit,20s:300kbit,40s:2mbit period 60s limit 64kb",
        "delay 20ms steps 0s:4mbit,20s:400kbit,40s:4mbit period 60s limit 64kb",
        "capacity falls off a cliff for 20 s every minute",
    ),
}

_TRACE_PROFILES: dict[str, tuple[str, str, str, str, str]] = {
    "congested-lte": (
        "ferry-lte.up",
        "delay 30ms limit 150kb",
        "ferry-lte.down",
        "delay 30ms limit 150kb",
        "synthetic congested LTE (shipped trace: ~1.2/2.8 Mbit/s, fades, outages), deep buffers",
    ),
    "verizon-lte": (
        "Verizon-LTE-short.up",
        "delay 30ms limit 150kb",
        "Verizon-LTE-short.down",
        "delay 30ms limit 150kb",
        "real Verizon LTE trace (Mahimahi, from FERRY_TRACES_DIR), deep buffers",
    ),
}


def builtin_profile_names() -> list[str]:
    return [*_SPECS, *_TRACE_PROFILES]


def get_profile(name: str) -> Profile:
    """A built-in profile by name (``ValueError`` lists the names)."""
    if name in _SPECS:
        up, down, desc = _SPECS[name]
        return Profile(name, LinkConfig.parse(up), LinkConfig.parse(down), desc)
    if name in _TRACE_PROFILES:
        up_file, up_extra, down_file, down_extra, desc = _TRACE_PROFILES[name]
        return Profile(
            name, _trace_config(up_file, up_extra), _trace_config(down_file, down_extra), desc
        )
    raise ValueError(f"unknown profile {name!r} (known: {', '.join(builtin_profile_names())})")


def builtin_profiles(include_traces: bool = True) -> dict[str, Profile]:
    """All built-in profiles; trace profiles are skipped if their files are missing."""
    out: dict[str, Profile] = {}
    for name in builtin_profile_names():
        if name in _TRACE_PROFILES and not include_traces:
            continue
        try:
            out[name] = get_profile(name)
        except FileNotFoundError:
            continue
    return out
