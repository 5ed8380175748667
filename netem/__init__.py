"""Ferry: netem, a user-space weak-network emulator.

Sans-I/O cores (no clock, seeded randomness): ``netem.link`` (``Link``,
``LinkConfig`` in ``tc netem`` words), ``netem.loss``, ``netem.rate``
(constant, steps, Mahimahi traces), ``netem.sim`` (virtual-time harness),
``netem.profiles``, ``netem.tracegen`` (the synthetic LTE traces the package ships
in ``netem/traces/``). Shells: ``netem.turn`` (impairing TURN relay),
``netem.proxy`` (UDP proxy), ``netem.control`` (HTTP API), ``netem.cli``.
"""

from netem.link import Link, LinkConfig, LinkStats
from netem.profiles import Profile, builtin_profiles, get_profile
from netem.sim import ManualClock, Sim

__all__ = [
    "Link",
    "LinkConfig",
    "LinkStats",
    "ManualClock",
    "Profile",
    "Sim",
    "builtin_profiles",
    "get_profile",
]
