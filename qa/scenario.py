"""Scenario files: who joins, what they publish, their links over time, what must hold.

Why a declarative file: QA people describe a *situation* ("a teacher on broadband and
twenty students, three of them on 3G, one loses its uplink for ten seconds") and
what a good call looks like under it; the runner (``qa.runner``) turns that into
Ferry, the impairing TURN relay, real WebRTC clients and a report. The same file runs
in CI with a short ``--duration`` (the schedule is compressed with it) and by hand at
full length.

Format (YAML)::

    name: bandwidth-cliff
    description: one line shown by ``ferry netem list``
    duration: 30s                 # bare numbers are seconds
    room: cliff                   # optional; default: the scenario name
    seed: 1                       # seeds every relay link (reproducible loss)
    video: {width: 320, height: 240, fps: 15}   # what Python publishers send
    participants:
      - name: alice
        client: ferry             # ferry (aiortc FerryClient) | lite (LiteClient) | chromium
        count: 1                  # > 1 makes alice1..aliceN, one group named "alice"
        publish: [audio, video]   # or [] / none: receive-only
        subscribe: true
        link: broadband           # profile name, "UP|DOWN" netem words, or {up:, down:}
        schedule:                 # changes of this participant's link over time
          - {at: 10s, up: "delay 20ms rate 300kbit", down: "delay 20ms rate 300kbit"}
          - {at: 20s, link: broadband}
    expect:
      - "bob.decoded_fps > 8"                       # one participant (or group)
      - "subscribers.loss_after_recovery < 2%"      # every subscriber must satisfy it
      - "mean(students.decoded_fps) > 5"            # min/max/mean/median over a group
      - "viewer.latency_p95_ms < 400ms"             # glass-to-glass
      - "participant bob decoded_frames > 100"      # the issue's wording also parses

Subjects: a participant name, a group name (``count > 1``), ``all``, ``subscribers``
(alias ``subscriber``, ``video``, ``audio``: everyone who subscribes) and
``publishers`` (alias ``publisher``). Values take units: ``2%`` (loss metrics are
fractions), ``500ms``/``2s`` (metrics ending ``_ms``), ``300kbit``/``1mbit``
(metrics ending ``_bps``). The metric names are listed in ``METRICS``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from netem.profiles import Profile, builtin_profile_names, get_profile
from netem.spec import parse_time_ms

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
CLIENT_KINDS = ("ferry", "lite", "chromium")
MEDIA_KINDS = ("audio", "video")

METRICS: dict[str, str] = {
    "decoded_frames": "video frames decoded, summed over every remote video track",
    "decoded_frames_min": "video frames decoded by the worst remote video track",
    "decoded_fps": "decoded video frames per second per remote video track (worst track)",
    "final_fps": "mean decoded fps (worst track) over the last quarter of the run: did it recover?",
    "audio_frames": "audio frames received, summed over remote audio tracks",
    "freeze_count": "video freezes: Chromium's own freezeCount; other clients: frame gaps over "
                    "max(3 x median, median + 150 ms) of the last 30 intervals (W3C)",
    "freeze_max_ms": "longest freeze (0 when there was none)",
    "freeze_total_ms": "time spent frozen, summed over remote video tracks",
    "audio_gap_ms": "audio missing (gaps between received audio frames beyond 60 ms)",
    "audio_concealed": "fraction of audio concealed (Chromium: concealedSamples / "
                       "totalSamplesReceived; aiortc: time without audio frames)",
    "audio_loss_after_recovery": "fraction of audio RTP packets that never arrived",
    "video_nacks_repeated": "video packets an aiortc viewer NACKed again (still missing 100 ms "
                            "after it asked; clients.nack_repeat)",
    "video_holes_given_up": "video packets an aiortc viewer stopped waiting for after 1 s and "
                            "asked a keyframe instead (clients.video_jitter)",
    "latency_p50_ms": "glass-to-glass latency, median over shown frames (capture stamp in the "
                      "picture to display; Python and Chromium publishers stamp, LiteClient not)",
    "latency_p95_ms": "glass-to-glass latency, 95th percentile",
    "latency_max_ms": "glass-to-glass latency, largest",
    "audio_latency_p50_ms": "mouth-to-ear latency, median over the heard beeps (Python "
                            "publishers beep every 2 s of the wall clock; aiortc listeners)",
    "audio_latency_max_ms": "mouth-to-ear latency, largest",
    "loss_before_recovery": "fraction of packets the relay dropped towards this client",
    "loss_after_recovery": "fraction of video RTP packets that never arrived, even by NACK/RTX "
                           "(audio packets when the participant receives no video)",
    "uplink_loss": "fraction of packets the relay dropped from this client",
    "recv_bps": "mean received bitrate (relay downlink of this participant)",
    "capacity_bps": "mean capacity of the participant's downlink (its rate or trace)",
    "utilization": "recv_bps / capacity_bps (None on a link without a rate)",
    "sent_bps": "mean sent bitrate (relay uplink of this participant)",
    "rtt_ms": "median RTT from the client's getStats (Ferry's estimate if absent)",
    "rtt_max_ms": "largest sampled RTT",
    "jitter_ms": "median receive jitter",
    "sent_fps_min": "lowest video frame rate the publisher's encoder produced per 500 ms "
                    "(a publisher starved of CPU makes every viewer freeze)",
    "jitter_buffer_ms": "median of Chrome's video jitter buffer delay per 500 ms (Chromium)",
    "audio_jitter_buffer_ms": "median of Chrome's audio jitter buffer delay per 500 ms (Chromium)",
    "audio_jitter_target_max_ms": "largest delay Chrome's audio jitter buffer aimed for on network "
                                  "evidence alone, per 500 ms (jitterBufferMinimumDelay; Chromium)",
    "layer_mean": "mean simulcast layer Ferry forwarded to this subscriber (0 = lowest)",
    "layer_min": "lowest simulcast layer forwarded after the first frame",
    "estimate_bps": "mean of Ferry's bandwidth estimate for this subscriber, if exposed",
    "connected": "1 when every peer connection of the participant connected, else 0",
}

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
AGGREGATES = ("min", "max", "mean", "median", "sum")
SUBJECT_ALIASES = {
    "subscriber": "subscribers",
    "video": "subscribers",
    "audio": "subscribers",
    "publisher": "publishers",
    "everyone": "all",
}


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message names the file and the field."""


def parse_seconds(value: Any, what: str = "time") -> float:
    """``10s``/``500ms``/``1.5`` (bare numbers are seconds, unlike tc) -> seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"bad {what}: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"[0-9]*\.?[0-9]+", text):
        return float(text)
    if text.endswith("min"):
        return float(text[:-3]) * 60.0
    try:
        return parse_time_ms(text) / 1000.0
    except ValueError as exc:
        raise ScenarioError(f"bad {what} {value!r}: {exc}") from None


def _profile(name: str, value: Any) -> Profile:
    """A built-in profile name, ``"UP|DOWN"``, one spec for both ways, or a mapping."""
    if isinstance(value, str) and value.strip() in builtin_profile_names():
        p = get_profile(value.strip())
        return Profile(name, p.up, p.down, p.description or value.strip())
    try:
        return Profile.coerce(name, value if value is not None else "")
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"bad link {value!r}: {exc}") from None


@dataclass(frozen=True)
class LinkChange:
    """At ``at_s`` into the run, set the participant's link (both directions)."""

    at_s: float
    profile: Profile
    label: str


@dataclass
class ParticipantSpec:
    """One participant line of the file (a group when ``count > 1``)."""

    name: str
    client: str = "ferry"
    count: int = 1
    publish: tuple[str, ...] = ("audio", "video")
    subscribe: bool = True
    link: Profile = field(default_factory=lambda: Profile("unimpaired"))
    link_label: str = "unimpaired"
    schedule: list[LinkChange] = field(default_factory=list)
    fallback: dict[str, Any] = field(default_factory=dict)

    def instance_names(self) -> list[str]:
        """``alice`` or ``alice1..aliceN``: the identities the runner joins with."""
        if self.count == 1:
            return [self.name]
        return [f"{self.name}{i}" for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class Expectation:
    """``[agg(]subject.metric[)] OP value``, parsed once when the file is loaded."""

    text: str
    subject: str
    metric: str
    op: str
    value: float
    aggregate: str | None = None

    @classmethod
    def parse(cls, text: str) -> Expectation:
        raw = str(text).strip()
        m = re.fullmatch(r"participant\s+(\S+)\s+(\w+)\s*(<=|>=|==|!=|<|>)\s*(\S+)", raw)
        if m:
            subject, metric, op, value = m.groups()
            agg = None
        else:
            m = re.fullmatch(
                r"(?:(\w+)\(\s*([\w.-]+)\.(\w+)\s*\)|([\w.-]+)\.(\w+))\s*(<=|>=|==|!=|<|>)\s*(\S+)",
                raw,
            )
            if not m:
                raise ScenarioError(
                    f"bad expectation {raw!r} (use 'who.metric < 2%' or 'mean(who.metric) > 5')"
                )
            agg, s1, m1, s2, m2, op, value = m.groups()
            subject, metric = (s1, m1) if agg else (s2, m2)
        if agg is not None and agg not in AGGREGATES:
            raise ScenarioError(f"bad aggregate {agg!r} in {raw!r} (use {', '.join(AGGREGATES)})")
        if metric not in METRICS:
            raise ScenarioError(f"unknown metric {metric!r} in {raw!r} (known: {', '.join(METRICS)})")
        return cls(raw, SUBJECT_ALIASES.get(subject, subject), metric, op,
                   parse_value(value, metric), agg)

    def holds(self, actual: float) -> bool:
        return _OPS[self.op](actual, self.value)


def parse_value(text: str, metric: str) -> float:
    """A threshold with an optional unit, converted to the metric's own unit."""
    m = re.fullmatch(r"(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z%]*)", str(text).strip())
    if not m:
        raise ScenarioError(f"bad value {text!r} for {metric}")
    value, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        return value
    if unit == "%":
        return value / 100.0
    if unit in ("ms", "s", "us") and metric.endswith("_ms"):
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    rates = {"bit": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6}
    if unit in rates and metric.endswith("_bps"):
        return value * rates[unit]
    raise ScenarioError(f"unit {unit!r} does not fit metric {metric}")


@dataclass
class Scenario:
    """A loaded, validated scenario."""

    name: str
    description: str
    duration_s: float
    participants: list[ParticipantSpec]
    expectations: list[Expectation]
    room: str
    seed: int = 0
    video: dict[str, float] = field(default_factory=lambda: {"width": 320, "height": 240, "fps": 15})
    path: Path | None = None

    def with_duration(self, duration_s: float) -> Scenario:
        """The same scenario compressed or stretched to ``duration_s``.

        Why scale the schedule rather than cut it: a 30 s bandwidth-cliff run in 8 s
        should still show the cliff and the recovery, just faster; expectations in
        per-second terms (``decoded_fps``) keep their meaning.
        """
        if duration_s <= 0:
            raise ScenarioError("duration must be > 0")
        k = duration_s / self.duration_s
        parts = []
        for p in self.participants:
            sched = [LinkChange(c.at_s * k, c.profile, c.label) for c in p.schedule]
            parts.append(ParticipantSpec(p.name, p.client, p.count, p.publish, p.subscribe,
                                         p.link, p.link_label, sched, dict(p.fallback)))
        return Scenario(self.name, self.description, duration_s, parts, list(self.expectations),
                        self.room, self.seed, dict(self.video), self.path)

    def groups(self) -> dict[str, list[str]]:
        """Subject names -> identities, for expectations."""
        out: dict[str, list[str]] = {"all": [], "subscribers": [], "publishers": []}
        for p in self.participants:
            names = p.instance_names()
            out.setdefault(p.name, []).extend(names)
            for n in names:
                out.setdefault(n, [n])
            out["all"].extend(names)
            if p.subscribe:
                out["subscribers"].extend(names)
            if p.publish:
                out["publishers"].extend(names)
        return out


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [] if value.strip().lower() in ("", "none", "nothing") else [value]
    if isinstance(value, Sequence):
        return list(value)
    raise ScenarioError(f"{what} must be a list")


def _mapping_label(value: Any) -> str:
    """How a link given as ``{up:, down:}`` is named in the report: its netem words."""
    if not isinstance(value, Mapping):
        return "custom"
    up, down = str(value.get("up") or "-"), str(value.get("down") or "-")
    return up if up == down else f"up: {up} / down: {down}"


def _participant(data: Mapping[str, Any], index: int) -> ParticipantSpec:
    if not isinstance(data, Mapping):
        raise ScenarioError(f"participants[{index}] must be a mapping")
    unknown = set(data) - {"name", "client", "count", "publish", "subscribe", "link",
                           "schedule", "fallback"}
    if unknown:
        raise ScenarioError(f"participants[{index}]: unknown keys {sorted(unknown)}")
    name = str(data.get("name") or "").strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ScenarioError(f"participants[{index}]: bad or missing name {name!r}")
    client = str(data.get("client", "ferry"))
    if client not in CLIENT_KINDS:
        raise ScenarioError(f"{name}: client must be one of {', '.join(CLIENT_KINDS)}")
    count = int(data.get("count", 1))
    if not 1 <= count <= 200:
        raise ScenarioError(f"{name}: count must be 1..200")
    publish = tuple(str(k) for k in _as_list(data.get("publish", ["audio", "video"]), "publish"))
    for kind in publish:
        if kind not in MEDIA_KINDS:
            raise ScenarioError(f"{name}: can publish audio and/or video, not {kind!r}")
    link_value = data.get("link", "unimpaired")
    link = _profile(name, link_value)
    schedule: list[LinkChange] = []
    for j, change in enumerate(_as_list(data.get("schedule"), "schedule")):
        if not isinstance(change, Mapping) or "at" not in change:
            raise ScenarioError(f"{name}: schedule[{j}] needs 'at' and a link or up/down")
        at = parse_seconds(change["at"], f"{name}: schedule[{j}].at")
        if "link" in change or "profile" in change:
            value = change.get("link", change.get("profile"))
            label = value if isinstance(value, str) else "custom"
        elif "up" in change or "down" in change:
            value = {"up": change.get("up", ""), "down": change.get("down", "")}
            label = _mapping_label(value)
        else:
            raise ScenarioError(f"{name}: schedule[{j}] needs link/profile or up/down")
        schedule.append(LinkChange(at, _profile(name, value), str(label)))
    schedule.sort(key=lambda c: c.at_s)
    fallback = dict(data.get("fallback") or {})
    if fallback and set(fallback) - {"client", "count"}:
        raise ScenarioError(f"{name}: fallback may set client and count only")
    return ParticipantSpec(
        name=name,
        client=client,
        count=count,
        publish=publish,
        subscribe=bool(data.get("subscribe", True)),
        link=link,
        link_label=link_value if isinstance(link_value, str) else _mapping_label(link_value),
        schedule=schedule,
        fallback=fallback,
    )


def load_scenario(source: str | Path | Mapping[str, Any]) -> Scenario:
    """Load and validate a scenario from a path, a built-in name, or a parsed mapping."""
    path: Path | None = None
    if isinstance(source, Mapping):
        data: Any = source
    else:
        path = resolve_scenario_path(source)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    where = str(path) if path else "scenario"
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where}: top level must be a mapping")
    unknown = set(data) - {"name", "description", "duration", "room", "seed", "video",
                           "participants", "expect"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        name = str(data.get("name") or (path.stem if path else "scenario"))
        duration = parse_seconds(data.get("duration", 30), "duration")
        if not 0 < duration <= 3600 or math.isnan(duration):
            raise ScenarioError("duration must be in (0, 3600] seconds")
        parts = [_participant(p, i) for i, p in enumerate(_as_list(data.get("participants"),
                                                                     "participants"))]
        if not parts:
            raise ScenarioError("no participants")
        seen: set[str] = set()
        for p in parts:
            names = {p.name, *p.instance_names()}
            if names & seen or names & {"all", "subscribers", "publishers", *SUBJECT_ALIASES}:
                raise ScenarioError(f"participant name {p.name!r} is taken or reserved")
            seen |= names
        for p in parts:
            for c in p.schedule:
                if c.at_s > duration:
                    raise ScenarioError(f"{p.name}: schedule at {c.at_s}s is after the end")
        expectations = [Expectation.parse(e) for e in _as_list(data.get("expect"), "expect")]
        video = {"width": 320, "height": 240, "fps": 15}
        video.update({k: v for k, v in dict(data.get("video") or {}).items()
                      if k in ("width", "height", "fps")})
        scenario = Scenario(
            name=name,
            description=str(data.get("description", "")).strip(),
            duration_s=duration,
            participants=parts,
            expectations=expectations,
            room=str(data.get("room") or name),
            seed=int(data.get("seed", 0)),
            video=video,
            path=path,
        )
        groups = scenario.groups()
        for e in expectations:
            if e.subject not in groups:
                raise ScenarioError(f"expectation {e.text!r}: no participant or group {e.subject!r}")
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return scenario


def resolve_scenario_path(source: str | Path) -> Path:
    """A path as given, or a built-in scenario name (``3g`` -> ``qa/scenarios/3g.yaml``)."""
    path = Path(source)
    if path.exists():
        return path
    builtin = SCENARIO_DIR / f"{source}.yaml"
    if builtin.exists():
        return builtin
    names = ", ".join(builtin_scenarios())
    raise ScenarioError(f"no scenario file {source!r} (built-in: {names})")


def builtin_scenarios() -> dict[str, Path]:
    """Name -> path of the shipped scenarios, sorted by name."""
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.yaml"))}


def describe_builtin() -> list[tuple[str, str]]:
    """(name, one-line description) per built-in scenario; unreadable ones say why."""
    out = []
    for name, path in builtin_scenarios().items():
        try:
            data = yaml.safe_load(path.read_text()) or {}
            desc = str(data.get("description", "")).strip().splitlines()[0:1]
            out.append((name, desc[0] if desc else ""))
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            out.append((name, f"(unreadable: {exc})"))
    return out
