"""Redundancy for audio listeners that neither NACK audio nor negotiate RED.

Such a listener (aiortc is one: its receiver NACKs video only and has no RED) loses
every Opus packet the link drops. An SFU cannot add Opus in-band FEC without
re-encoding, and RED, ULPFEC or FlexFEC all need the receiver to have negotiated them.
Plain duplicates need nothing: a receiver drops a second copy of a sequence number it
already has (SRTP replay protection rejects it before the jitter buffer, RFC 3711
section 3.3.2), so a copy only ever fills a hole.

How many copies: aiortc's audio jitter buffer (16 packets, prefetch 4) turns one
missing packet into about five missing frames (100 ms), because it skips a hole only
when full and then drains one frame per packet; a hole filled late leaves a backlog
that overflows later the same way. At 20 % random loss, aiortc's buffer fed in a
simulation: no copies 67-69 % of frames missing, two copies 3-6 %, three 0.7-1.2 %,
four 0.2 % (live on 127.0.0.1, ``tests/test_audio_loss_live.py``: 75 % with none,
~1 % with four). So at 15 % loss and more each packet goes five times, ~5x the bytes
of plain Opus (~160 kbit/s), which only a lossy listener that can neither ask for
repair nor decode RED pays. Copies
ride with later packets, 20, 40, 80 and 120 ms after the original, so a burst of
drops still leaves one.

The level follows the listener's receiver reports, which count a hole a duplicate
filled as received: the reported loss is what is left *after* the copies. At level
``n`` the link's own loss is estimated as ``reported ** (1 / (n + 1))`` (independent
drops). Copies that work leave little to see: at 20 % loss and four copies, under 2 %
of 1 s reports show any loss, so a level steps down one at a time and only after
``HOLD_MS`` without a report that asked for it (a step too far shows loss within a
dozen reports on average, and one level less costs ~1 % of frames meanwhile, no long
gap). A new listener starts at ``START_LEVEL``: its first report comes 0.5-1.5 s in,
and what it loses before then nobody repairs; on a clean link the copies stop after
three holds.
"""

from __future__ import annotations

__all__ = ["COPY_OFFSETS", "HOLD_MS", "START_LEVEL", "AudioDuplicates", "copies_for_loss"]

COPY_OFFSETS = (1, 2, 4, 6)  # a copy of packet N - k goes right after packet N
START_LEVEL = 3  # copies before the first receiver report
HOLD_MS = 20_000.0  # a level is kept this long after the last report that asked for it


def copies_for_loss(loss: float) -> int:
    """Extra copies of each packet for a link loss rate (0..1)."""
    if loss >= 0.15:
        return 4
    if loss >= 0.10:
        return 3
    if loss >= 0.05:
        return 2
    if loss >= 0.02:
        return 1
    return 0


class AudioDuplicates:
    """Sans-I/O: extra copies of each audio packet, from receiver reports."""

    def __init__(self, hold_ms: float = HOLD_MS) -> None:
        self.level = START_LEVEL
        self.hold_ms = hold_ms
        # When a report last asked for the current level (the start level: the first).
        self._justified_ms: float | None = None

    @property
    def offsets(self) -> tuple[int, ...]:
        """Which earlier packets go again with each new one (1 = the one before)."""
        return COPY_OFFSETS[: self.level]

    def on_report(self, fraction_lost: float, now_ms: float) -> int:
        """A receiver report's fraction lost (0..1) about this stream; the new level."""
        link_loss = fraction_lost ** (1.0 / (self.level + 1)) if fraction_lost > 0 else 0.0
        wanted = copies_for_loss(link_loss)
        if self._justified_ms is None:
            self._justified_ms = now_ms
        if wanted >= self.level:
            self.level = wanted
            self._justified_ms = now_ms
        elif now_ms - self._justified_ms >= self.hold_ms:
            self.level -= 1
            self._justified_ms = now_ms
        return self.level
