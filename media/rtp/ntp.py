"""NTP timestamp helpers for RTCP SR/RR (RFC 3550 sections 4 and 6.4).

Cores never read a clock. The shell maps monotonic time to wall time *once* (at
start-up: ``unix_offset_s = time.time() - loop.time()``) and derives every NTP value
from ``now_ms`` with :func:`ntp_at`. A wall-clock step (NTP slew, suspend) then cannot
make the RTT computed from LSR/DLSR jump, because both ends of the subtraction use the
same mapping.
"""

from __future__ import annotations

__all__ = ["NTP_UNIX_OFFSET_S", "ntp_at", "ntp_from_unix", "ntp_middle32", "ntp_to_ms", "ntp_to_unix"]

NTP_UNIX_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_MASK64 = (1 << 64) - 1


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) for a Unix time."""
    whole = int(seconds // 1)
    frac = int((seconds - whole) * (1 << 32))
    if frac >= 1 << 32:  # rounding at the top of a second
        whole += 1
        frac -= 1 << 32
    return (((whole + NTP_UNIX_OFFSET_S) << 32) | frac) & _MASK64


def ntp_to_unix(ntp: int) -> float:
    """Unix seconds for a 64-bit NTP timestamp (32.32 since 1900): ``ntp_from_unix``'s inverse."""
    return (ntp >> 32) - NTP_UNIX_OFFSET_S + (ntp & 0xFFFFFFFF) / 4294967296.0


def ntp_at(now_ms: float, unix_offset_s: float) -> int:
    """NTP timestamp for monotonic ``now_ms`` given the shell's one-off wall mapping."""
    return ntp_from_unix(unix_offset_s + now_ms / 1000.0)


def ntp_middle32(ntp: int) -> int:
    """The compact form (16.16) used in LSR and in RTT arithmetic."""
    return (ntp >> 16) & 0xFFFFFFFF


def ntp_to_ms(middle32: int) -> float:
    """Milliseconds represented by a compact 16.16 NTP value (or interval)."""
    return middle32 * 1000.0 / 65536.0
