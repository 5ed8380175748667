"""Packet loss models, in netem's vocabulary and with netem's state machines.

Why a separate module: loss is the one impairment with its own state (a Markov
chain), and tests want to check each model's statistics on its own. Every model
is a small mutable object with one method, ``drop(rng) -> bool``, called once per
packet in arrival order. Randomness only comes from the ``random.Random`` passed
in, so a seeded link is reproducible (no module-level ``random``).

A ``Link`` deep-copies the model of its ``LinkConfig``, so the config stays a
value that can be shared, compared and printed (``spec()`` gives it back in
``tc netem`` words).

Models:

* ``NullLoss`` - never drops (the null variant, STYLE habit 8).
* ``Bernoulli(p, correlation)`` - ``loss random P [CORR]``; correlation follows
  netem's ``get_crandom`` (a weighted average with the previous draw; it skews
  the distribution, as in netem, and is kept for parity only).
* ``GilbertElliott(p, r, one_minus_h, one_minus_k)`` - ``loss gemodel p r 1-h 1-k``.
  ``p`` = P(good -> bad), ``r`` = P(bad -> good), ``1-h`` = loss probability in
  the bad state, ``1-k`` = loss probability in the good state. Defaults as in
  iproute2: ``r = 1 - p``, ``1-h = 100%``, ``1-k = 0%``. The step is the
  kernel's: the loss draw uses the state *before* the transition draw. (The
  kernel stores the third number in a field it compares the other way round;
  we follow the tc-netem man page meaning, which is what people quote.)
* ``FourState(p13, p31, p32, p23, p14)`` - ``loss state p13 [p31 [p32 [p23 [p14]]]]``,
  netem's ``loss_4state`` (as fixed upstream in 2026: plain cumulative
  comparisons). States: 1 = transmitted in gap, 2 = transmitted in burst,
  3 = lost in burst, 4 = isolated loss. Defaults as in iproute2: ``p31 = 1 -
  p13``, ``p32 = 0``, ``p23 = 1``, ``p14 = 0`` (so ``loss state P`` is Bernoulli).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


class LossModel(Protocol):
    """What a ``Link`` needs from a loss model."""

    def drop(self, rng: random.Random) -> bool:
        """Decide the fate of the next packet (True = lose it)."""
        ...

    def spec(self) -> str:
        """The model in ``tc netem`` words (empty for no loss)."""
        ...


def _pct(x: float) -> str:
    """Format a probability as tc does (``5%``), without float noise."""
    return f"{round(x * 100, 6):g}%"


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1] (got {value!r})")


@dataclass(slots=True)
class CorrelatedRandom:
    """netem's ``get_crandom``: ``next = (1 - rho) * U + rho * last``.

    Why: netem applies one of these per impairment (loss, duplicate, corrupt,
    reorder, delay), each with its own ``last``. With ``rho == 0`` it is a plain
    uniform draw and costs one call.
    """

    rho: float = 0.0
    last: float = field(default=0.0, compare=False)

    def next(self, rng: random.Random) -> float:
        u = rng.random()
        if self.rho == 0.0:
            return u
        value = (1.0 - self.rho) * u + self.rho * self.last
        self.last = value
        return value


@dataclass(slots=True)
class NullLoss:
    """Never drops: the default of ``LinkConfig``."""

    def drop(self, rng: random.Random) -> bool:
        return False

    def spec(self) -> str:
        return ""


@dataclass(slots=True)
class Bernoulli:
    """Independent (optionally netem-correlated) loss with probability ``p``."""

    p: float
    correlation: float = 0.0
    _crandom: CorrelatedRandom = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_prob("loss probability", self.p)
        _check_prob("loss correlation", self.correlation)
        self._crandom = CorrelatedRandom(self.correlation)

    def drop(self, rng: random.Random) -> bool:
        if self.p == 0.0:
            return False
        if self.correlation == 0.0:
            return rng.random() < self.p
        return self._crandom.next(rng) < self.p

    def spec(self) -> str:
        corr = f" {_pct(self.correlation)}" if self.correlation else ""
        return f"loss random {_pct(self.p)}{corr}"


@dataclass(slots=True)
class GilbertElliott:
    """Two-state Gilbert-Elliott loss (``loss gemodel p r 1-h 1-k``).

    Why this shape: bursty wireless loss is what breaks NACK and FEC in ways a
    Bernoulli model never shows. With ``1-h = 1`` and ``1-k = 0`` (simple
    Gilbert) loss bursts are geometric with mean ``1 / r`` and the loss rate is
    ``p / (p + r)``.
    """

    p: float
    r: float | None = None
    one_minus_h: float = 1.0
    one_minus_k: float = 0.0
    bad: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.r is None:
            self.r = 1.0 - self.p
        _check_prob("gemodel p", self.p)
        _check_prob("gemodel r", self.r)
        _check_prob("gemodel 1-h", self.one_minus_h)
        _check_prob("gemodel 1-k", self.one_minus_k)

    def drop(self, rng: random.Random) -> bool:
        if self.bad:
            if rng.random() < self.r:  # type: ignore[operator]
                self.bad = False
            return rng.random() < self.one_minus_h
        if rng.random() < self.p:
            self.bad = True
        return rng.random() < self.one_minus_k

    def loss_rate(self) -> float:
        """Stationary loss probability implied by the parameters."""
        r = self.r or 0.0
        if self.p + r == 0.0:
            return self.one_minus_k
        pi_bad = self.p / (self.p + r)
        return pi_bad * self.one_minus_h + (1.0 - pi_bad) * self.one_minus_k

    def spec(self) -> str:
        return (
            f"loss gemodel {_pct(self.p)} {_pct(self.r or 0.0)} "
            f"{_pct(self.one_minus_h)} {_pct(self.one_minus_k)}"
        )


@dataclass(slots=True)
class FourState:
    """netem's 4-state Markov loss (``loss state p13 p31 p32 p23 p14``)."""

    p13: float
    p31: float | None = None
    p32: float = 0.0
    p23: float = 1.0
    p14: float = 0.0
    state: int = field(default=1, compare=False)

    def __post_init__(self) -> None:
        if self.p31 is None:
            self.p31 = 1.0 - self.p13
        for name in ("p13", "p31", "p32", "p23", "p14"):
            _check_prob(f"loss state {name}", getattr(self, name))
        if self.p13 + self.p14 > 1.0 + 1e-12:
            raise ValueError("loss state: p13 + p14 must not exceed 100%")
        if self.p31 + self.p32 > 1.0 + 1e-12:  # type: ignore[operator]
            raise ValueError("loss state: p31 + p32 must not exceed 100%")

    def drop(self, rng: random.Random) -> bool:
        rnd = rng.random()
        state = self.state
        if state == 1:
            if rnd < self.p14:
                self.state = 4
                return True
            if rnd < self.p13 + self.p14:
                self.state = 3
                return True
            return False
        if state == 2:
            if rnd < self.p23:
                self.state = 3
                return True
            return False
        if state == 3:
            if rnd < self.p32:
                self.state = 2
                return False
            if rnd < self.p31 + self.p32:  # type: ignore[operator]
                self.state = 1
                return False
            return True
        self.state = 1  # state 4: an isolated loss is followed by a transmission
        return False

    def spec(self) -> str:
        return (
            f"loss state {_pct(self.p13)} {_pct(self.p31 or 0.0)} {_pct(self.p32)} "
            f"{_pct(self.p23)} {_pct(self.p14)}"
        )


LOSS_MODELS: dict[str, type] = {
    "none": NullLoss,
    "random": Bernoulli,
    "gemodel": GilbertElliott,
    "state": FourState,
}
"""Named factory (STYLE habit 8): the words ``loss`` accepts after it."""
