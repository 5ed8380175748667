"""``tc netem`` vocabulary: parse a spec string into ``LinkConfig`` fields.

Why: people who know ``tc qdisc add dev eth0 root netem delay 80ms 20ms loss 5%
rate 1mbit`` should be able to paste the same words. Units follow tc exactly:

* times: ``us``/``usec``, ``ms``/``msec``, ``s``/``sec``; a bare number is
  microseconds, as in tc;
* rates: ``bit``, ``kbit``, ``mbit``, ``gbit`` (and ``kibit``...) are bits/s;
  ``bps``, ``kbps``, ``mbps``, ``gbps`` are **bytes**/s as in tc; a bare number
  is bits/s;
* sizes (``limit``): ``b``, ``k``/``kb``, ``m``/``mb`` (1024-based, as tc); a bare
  ``limit N`` is N packets, as in netem;
* percentages: ``5%`` or a fraction ``0.05``.

Keywords: ``delay TIME [JITTER [CORR]]``, ``distribution uniform|normal``,
``loss [random] PCT [CORR]``, ``loss gemodel p [r [1-h [1-k]]]``, ``loss state
p13 [p31 [p32 [p23 [p14]]]]``, ``duplicate PCT [CORR]``, ``corrupt PCT [CORR]``,
``reorder PCT [CORR] [gap N]``, ``rate RATE``, ``limit N|SIZE``, ``seed N``, and
two extensions: ``trace PATH`` (Mahimahi; a bare name of a trace Ferry ships, such
as ``ferry-lte.down``, works from any directory) and ``steps 0s:2mbit,20s:300kbit
[period 60s]``. Errors are ``ValueError`` with a message naming the bad word.
"""

from __future__ import annotations

import os
import re
from typing import Any

from netem.loss import Bernoulli, FourState, GilbertElliott
from netem.rate import ConstantRate, MahimahiTrace, StepRate
from netem.tracegen import shipped_path

KEYWORDS = (
    "delay",
    "distribution",
    "loss",
    "duplicate",
    "corrupt",
    "reorder",
    "rate",
    "limit",
    "seed",
    "trace",
    "steps",
)

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_TIME_UNITS = {
    "": 0.001,
    "us": 0.001,
    "usec": 0.001,
    "usecs": 0.001,
    "ms": 1.0,
    "msec": 1.0,
    "msecs": 1.0,
    "s": 1000.0,
    "sec": 1000.0,
    "secs": 1000.0,
}
_RATE_UNITS = {
    "": 1.0,
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "kibit": 1024.0,
    "mibit": 1024.0**2,
    "gibit": 1024.0**3,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}
_SIZE_UNITS = {
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "kbit": 128,
    "mbit": 128 * 1024,
}


def _split(token: str, what: str) -> tuple[float, str]:
    m = re.fullmatch(_NUM + r"([a-zA-Z%]*)", token)
    if not m:
        raise ValueError(f"bad {what} {token!r}")
    return float(m.group(1)), m.group(2).lower()


def parse_time_ms(token: str) -> float:
    """``80ms`` -> 80.0; a bare number is microseconds, as in tc."""
    value, unit = _split(token, "time")
    if unit not in _TIME_UNITS:
        raise ValueError(f"bad time unit in {token!r} (allowed: us, ms, s)")
    return value * _TIME_UNITS[unit]


def parse_rate_bps(token: str) -> float:
    """``1mbit`` -> 1e6 bit/s; ``bps`` suffixes are bytes/s, as in tc."""
    value, unit = _split(token, "rate")
    if unit not in _RATE_UNITS:
        raise ValueError(
            f"bad rate unit in {token!r} (allowed: bit, kbit, mbit, gbit, bps, kbps, mbps)"
        )
    bps = value * _RATE_UNITS[unit]
    if bps <= 0:
        raise ValueError(f"rate must be > 0 (got {token!r})")
    return bps


def parse_size_bytes(token: str) -> int:
    """``100kb`` -> 102400 (tc sizes are 1024-based)."""
    value, unit = _split(token, "size")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"bad size unit in {token!r} (allowed: b, kb, mb, gb)")
    return int(value * _SIZE_UNITS[unit])


def parse_percent(token: str) -> float:
    """``5%`` -> 0.05; a bare number must already be a fraction in [0, 1]."""
    value, unit = _split(token, "percentage")
    if unit == "%":
        value /= 100.0
    elif unit:
        raise ValueError(f"bad percentage {token!r} (use 5% or 0.05)")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"percentage out of range: {token!r}")
    return value


def _is_percent(token: str | None) -> bool:
    return token is not None and re.fullmatch(_NUM + "%?", token) is not None


def _is_time(token: str | None) -> bool:
    if token is None:
        return False
    m = re.fullmatch(_NUM + r"([a-zA-Z]*)", token)
    return m is not None and m.group(2).lower() in _TIME_UNITS


class _Tokens:
    """A cursor over the words of a spec, for optional trailing arguments."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.pos = 0

    def peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def take(self, what: str) -> str:
        if self.pos >= len(self.words):
            raise ValueError(f"missing {what}")
        self.pos += 1
        return self.words[self.pos - 1]

    def take_percents(self, limit: int) -> list[float]:
        out: list[float] = []
        while len(out) < limit and _is_percent(self.peek()):
            out.append(parse_percent(self.take("percentage")))
        return out


def _parse_loss(tok: _Tokens) -> Any:
    word = tok.peek()
    if word == "random":
        tok.take("loss model")
        word = tok.peek()
    if word == "gemodel":
        tok.take("loss model")
        p = parse_percent(tok.take("gemodel p"))
        rest = tok.take_percents(3)
        kwargs: dict[str, float] = {}
        for name, value in zip(("r", "one_minus_h", "one_minus_k"), rest, strict=False):
            kwargs[name] = value
        return GilbertElliott(p, **kwargs)
    if word == "state":
        tok.take("loss model")
        p13 = parse_percent(tok.take("loss state p13"))
        rest = tok.take_percents(4)
        kwargs = dict(zip(("p31", "p32", "p23", "p14"), rest, strict=False))
        return FourState(p13, **kwargs)
    if not _is_percent(word):
        raise ValueError(
            f"bad loss {word!r} (use: loss 5% [CORR] | loss gemodel p r 1-h 1-k | "
            "loss state p13 p31 p32 p23 p14)"
        )
    p = parse_percent(tok.take("loss percentage"))
    corr = tok.take_percents(1)
    return Bernoulli(p, corr[0] if corr else 0.0)


def _parse_pct_corr(tok: _Tokens, name: str) -> tuple[float, float]:
    value = parse_percent(tok.take(f"{name} percentage"))
    corr = tok.take_percents(1)
    return value, corr[0] if corr else 0.0


def _parse_steps(tok: _Tokens) -> StepRate:
    body = tok.take("steps list (e.g. 0s:2mbit,20s:300kbit)")
    steps: list[tuple[float, float]] = []
    for item in body.split(","):
        t, sep, r = item.partition(":")
        if not sep:
            raise ValueError(f"bad step {item!r} (use TIME:RATE, e.g. 20s:300kbit)")
        steps.append((parse_time_ms(t), parse_rate_bps(r) if r not in ("0", "0bit") else 0.0))
    period = None
    if tok.peek() == "period":
        tok.take("period")
        period = parse_time_ms(tok.take("period time"))
    return StepRate(tuple(steps), period)


def _parse_delay(tok: _Tokens, out: dict[str, Any]) -> None:
    out["delay_ms"] = parse_time_ms(tok.take("delay time"))
    if _is_time(tok.peek()):
        out["jitter_ms"] = parse_time_ms(tok.take("jitter"))
        corr = tok.take_percents(1)
        if corr:
            out["delay_correlation"] = corr[0]


def _parse_reorder(tok: _Tokens, out: dict[str, Any]) -> None:
    out["reorder"], out["reorder_correlation"] = _parse_pct_corr(tok, "reorder")
    if tok.peek() == "gap":
        tok.take("gap")
        gap = tok.take("gap distance")
        if not gap.isdigit():
            raise ValueError(f"bad gap {gap!r} (a packet count)")
        out["reorder_gap"] = int(gap)


def _parse_one(word: str, tok: _Tokens, out: dict[str, Any]) -> None:
    if word == "delay":
        _parse_delay(tok, out)
    elif word == "distribution":
        out["distribution"] = tok.take("distribution name")
    elif word == "loss":
        out["loss"] = _parse_loss(tok)
    elif word in ("duplicate", "corrupt"):
        out[word], out[f"{word}_correlation"] = _parse_pct_corr(tok, word)
    elif word == "reorder":
        _parse_reorder(tok, out)
    elif word == "rate":
        out["rate"] = ConstantRate(parse_rate_bps(tok.take("rate")))
    elif word == "limit":
        value = tok.take("limit")
        if value.isdigit():
            out["queue_packets"] = int(value)
        else:
            out["queue_bytes"] = parse_size_bytes(value)
    elif word == "seed":
        value = tok.take("seed")
        if not value.isdigit():
            raise ValueError(f"bad seed {value!r} (a non-negative integer)")
        out["seed"] = int(value)
    elif word == "trace":
        path = tok.take("trace path")
        shipped = shipped_path(path)
        if not os.path.exists(path) and os.sep not in path and shipped.exists():
            path = str(shipped)
        out["rate"] = MahimahiTrace.load(path)
    elif word == "steps":
        out["rate"] = _parse_steps(tok)
    else:
        raise ValueError(f"unknown netem keyword {word!r} (allowed: {', '.join(KEYWORDS)})")


def parse_netem(text: str) -> dict[str, Any]:
    """Parse ``delay 80ms 20ms loss 5% rate 1mbit limit 100kb`` into field values."""
    words = text.split()
    if words and words[0] == "netem":
        words = words[1:]
    tok = _Tokens(words)
    out: dict[str, Any] = {}
    seen: set[str] = set()
    while tok.peek() is not None:
        word = tok.take("keyword")
        key = "rate" if word in ("trace", "steps") else word
        if key in seen:
            raise ValueError(f"netem keyword {word!r} given twice")
        seen.add(key)
        _parse_one(word, tok, out)
    return out
