"""Listeners that neither NACK audio nor negotiate RED get each Opus packet again.

Socket-free, virtual time: a PublishedTrack's audio layer in, a DownTrack into a
recording sink out, receiver reports fed by hand. The policy (media.audio.duplicates)
reads the reported loss as what is left after the copies.
"""

from __future__ import annotations

import random

import pytest

from media.audio.duplicates import HOLD_MS, START_LEVEL, AudioDuplicates
from media.routing.down_track import DownTrack
from media.wire.rtp import parse_rtp

from .fakes import FakeDownTrackSink, OpusStream
from .test_routing import audio_track, report_block, subscribe


def _listener(**overrides: object) -> tuple[DownTrack, FakeDownTrackSink, OpusStream]:
    track, _ = audio_track(red_pt=None)
    params: dict[str, object] = {"audio_nack": False}
    params.update(overrides)
    down, sink = subscribe(track, **params)
    return down, sink, OpusStream(ssrc=2001)


def _forward(down: DownTrack, opus: OpusStream, count: int, now_ms: float) -> float:
    for _ in range(count):
        down.track.layers[0].on_packet(parse_rtp(opus.next(red=False)), now_ms, False)
        now_ms += 20.0
    return now_ms


def test_lossy_listener_without_nack_or_red_gets_each_packet_five_times_as_the_same_bytes() -> None:
    down, sink, opus = _listener()
    report_block(down, 0.0, fraction_lost=0.20)
    _forward(down, opus, 10, 0.0)
    sent = sink.take()
    seqs = [parse_rtp(p.data).seq for p in sent]
    n = seqs[-5]
    # Each new packet, then the 1st, 2nd, 4th and 6th before it again (20-120 ms late).
    assert seqs[-10:] == [n - 1, n - 2, n - 3, n - 5, n - 7, n, n - 1, n - 2, n - 4, n - 6]
    by_seq: dict[int, set[bytes]] = {}
    for p in sent:
        by_seq.setdefault(parse_rtp(p.data).seq, set()).add(p.data)
    assert all(len(copies) == 1 for copies in by_seq.values())  # byte-identical copies
    assert down.audio_duplicates == 0 + 1 + 2 + 2 + 3 + 3 + 4 * 4 and len(sent) == 10 + down.audio_duplicates


def test_copies_stop_once_reports_show_a_clean_link() -> None:
    down, sink, opus = _listener()
    now = _forward(down, opus, 5, 0.0)
    assert down.audio_duplicates > 0  # a new listener starts protected
    for n in range(4):
        report_block(down, now, fraction_lost=0.0)
        now = _forward(down, opus, 5, now + n * HOLD_MS)
    sink.take()
    before = down.audio_duplicates
    _forward(down, opus, 10, now)
    assert down.audio_duplicates == before and len(sink.take()) == 10


def test_copies_with_transport_cc_keep_the_first_transport_seq() -> None:
    down, sink, opus = _listener(twcc_ext_id=3)
    report_block(down, 0.0, fraction_lost=0.20)
    _forward(down, opus, 4, 0.0)
    kinds = [p.kind for p in sink.take()]
    assert kinds == ["audio", "audio", "resend", "audio", "resend", "resend", "audio", "resend", "resend"]
    assert down.audio_duplicates == 5


@pytest.mark.parametrize("overrides", [{"audio_nack": True}, {"red_payload_type": 63}])
def test_listener_that_nacks_or_has_red_gets_no_copies(overrides: dict[str, object]) -> None:
    down, sink, opus = _listener(**overrides)
    report_block(down, 0.0, fraction_lost=0.20)
    _forward(down, opus, 10, 0.0)
    assert down.duplicates is None and down.audio_duplicates == 0
    assert len({parse_rtp(p.data).seq for p in sink.take()}) == 10


def test_level_reads_reported_loss_as_left_after_the_copies() -> None:
    dup = AudioDuplicates()
    assert dup.level == START_LEVEL == 3  # before any report: protected
    assert dup.on_report(0.0, 0.0) == 3
    assert [dup.on_report(0.0, HOLD_MS * n) for n in (1, 2, 3)] == [2, 1, 0]  # clean: copies stop
    assert dup.on_report(0.03, 4 * HOLD_MS) == 1
    assert dup.on_report(0.20, 4 * HOLD_MS + 1000.0) == 4
    # 20 % link loss, five transmissions: ~0.03 % left, and almost never any in a report.
    start = 4 * HOLD_MS + 3000.0
    assert dup.on_report(1 / 256, start) == 4
    assert dup.on_report(0.0, start + 1000.0) == 4
    assert dup.on_report(0.0, start + HOLD_MS - 1) == 4
    assert dup.on_report(0.0, start + HOLD_MS) == 3  # one step down ...
    assert dup.on_report(0.02, start + HOLD_MS + 1000.0) == 4  # ... and loss shows: back


def test_copies_fill_the_holes_of_random_loss() -> None:
    """What the receiver gets at 20 % independent loss: about 0.03 % of packets missing."""
    down, sink, opus = _listener()
    report_block(down, 0.0, fraction_lost=0.20)
    _forward(down, opus, 2000, 0.0)
    rng = random.Random(7)
    got = {parse_rtp(p.data).seq for p in sink.take() if rng.random() >= 0.20}
    missing = 2000 - len(got)
    assert missing / 2000 < 0.002, missing
