"""The captioner of one audio track: a `PacketSink` that turns Opus RTP into captions.

On the forwarding path (`on_packet`) it only copies the payload into a bounded inbox.
A timer on the event loop (every `tick_ms`, and only while packets flow) does the rest
in one batch: the Ferry decode path (jitter buffer, RED fill-in, FEC, PLC; Opus decoded
straight to 16 kHz mono, so 48 kHz stereo is downmixed by libopus), the segmenter, and
recognizer jobs queued on the track's `Lane` of the shared worker pool. Results come
back to the loop with `call_soon_threadsafe`, so `on_caption`/`on_status` always run on
the loop that opened the track.

Timing: every 20 ms frame keeps its RTP timestamp; an utterance's start/end are the
timestamps of its first/last voiced frames mapped to Unix ms by `RtpWallClock`.

Order: finals go out in utterance order, each utterance resolved exactly once (its
final, or nothing when it had no text and showed no partial). With a segment-based
backend (Whisper) partials are snapshot passes beside the lane, at most one at a time
and only while the pool is quiet, and a pause of `SPECULATE_AFTER_MS` inside an
utterance starts its final early: if the pause turns out to be the end, that pass is
the final (it saves most of the VAD hangover); if the speaker goes on, it was a partial.

Overload: when this track's oldest queued job waited more than `LAG_S` the captions
are "lagging"; past `PAUSE_S` (or `MAX_HEAVY` queued recognizer passes) it is "paused": new
utterances are skipped (counted in `dropped_segments`) until the queue drained, then
"resumed". Forwarding never waits for any of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from media.audio.decode_path import AudioDecodePath
from media.wire.red import parse_red
from media.wire.rtp import RtpView

from .api import Caption
from .clock import RtpWallClock
from .recognizer import Backend, Recognizer
from .segmenter import Segmenter, SegmenterConfig, SegmentEvent
from .worker import Lane, RecognitionPool

__all__ = ["TrackCaptioner"]

log = logging.getLogger("ferry.asr")

LAG_S = 2.0
PAUSE_S = 6.0
MAX_HEAVY = 6  # queued recognizer passes (partials, finals) of one track
INBOX_MAX = 500  # packets (10 s of 20 ms Opus) waiting for the next tick
IDLE_STOP_MS = 1500.0  # no packet for this long: end the utterance, stop the timer
SPECULATE_AFTER_MS = 150  # silence in an utterance that starts its final early
PCM_PER_MS = 16  # the recognizers' audio: 16 kHz mono


def _tail_to_drop(silent_ms: int) -> int:
    """Samples of trailing silence past ``SPECULATE_AFTER_MS`` (what a final leaves out)."""
    return max(0, silent_ms - SPECULATE_AFTER_MS) * PCM_PER_MS


@dataclass
class _Utterance:
    seq: int
    start_ts: int
    fed_ms: int = 0
    partial_at_ms: int = 0
    last_partial: str = ""
    partial_sent: bool = False
    skipped: bool = False
    last_ts: int = 0
    pending: list[np.ndarray] = field(default_factory=list)  # this tick's audio (loop)
    # Audio handed to the lane but not yet fed (loop appends, a worker takes).
    inq: list[np.ndarray] = field(default_factory=list)
    feed_queued: bool = False
    audio: list[np.ndarray] = field(default_factory=list)  # all of it (snapshot partials)
    partial_running: bool = False
    finalized: bool = False  # the final was computed: later partials are stale
    # Speculative final (snapshot backends): a pass started at a pause, covering the
    # voiced audio up to `spec_end`; if the utterance ends there, it is the final.
    spec_end: int | None = None
    spec_text: str | None = None  # its result, once done
    spec_wanted: tuple[int, int] | None = None  # the end came first: (start_ms, end_ms)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TrackCaptioner:
    """PacketSink for one audio track; see the module docstring."""

    wanted_layer = 0

    def __init__(
        self,
        *,
        backend: Backend,
        recognizer: Recognizer,
        pool: RecognitionPool,
        participant_sid: str,
        track_sid: str,
        identity: str,
        on_caption: Callable[[Caption], None],
        on_status: Callable[[str, str], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        red_pt: int | None = None,
        opus_pt: int = 111,
        clock_rate: int = 48000,
        unix_offset_s: float | None = None,
        timer: bool = True,
        tick_ms: float = 40.0,
        segmenter: SegmenterConfig | None = None,
        on_closed: Callable[[TrackCaptioner], None] | None = None,
    ) -> None:
        self.backend = backend
        self.recognizer = recognizer
        self.pool = pool
        self.lane: Lane = pool.lane()
        self.participant_sid = participant_sid
        self.track_sid = track_sid
        self.identity = identity
        self.on_caption = on_caption
        self.on_status = on_status
        self.loop = loop
        self.red_pt = red_pt
        self.opus_pt = opus_pt
        self.clock_rate = clock_rate
        self.unix_offset_s = unix_offset_s  # loop ms -> Unix, for the arrival fallback
        self.timer = timer and loop is not None
        self.tick_ms = tick_ms
        self._on_closed = on_closed
        self.path = self._new_path()
        self.segmenter = Segmenter(segmenter, ts_per_frame=clock_rate // 50)
        self.clock = RtpWallClock(clock_rate)
        self._inbox: deque[tuple[int, int, bytes, float, int]] = deque()
        self._red_pts: dict[int, bool] = {}  # payload type -> RED? (learned when red_pt is None)
        self._handle: asyncio.TimerHandle | None = None
        self._last_packet_ms: float | None = None
        self._fresh_path = False
        self._next_final = 1  # the utterance whose final goes out next
        self._resolved: dict[int, Caption | None] = {}
        self._detached = 0  # snapshot passes of this track running or waiting
        self._detached_lock = threading.Lock()
        self._muted = False  # closed without flush: deliver nothing more
        self._utt: _Utterance | None = None
        self._seq = 0
        self.lagging = False
        self.paused = False
        self.closed = False
        # counters
        self.packets = 0
        self.inbox_dropped = 0
        self.malformed = 0
        self.utterances = 0
        self.dropped_segments = 0
        self.finals = 0
        self.partials = 0
        self.frames = 0

    # -- PacketSink (event loop, must not block) ---------------------------------------
    def on_packet(self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        if self.closed or view.payload_end <= view.payload_start:
            return
        self.packets += 1
        if len(self._inbox) >= INBOX_MAX:
            self.inbox_dropped += 1
            return
        last = self._last_packet_ms
        if last is not None and now_ms - last > IDLE_STOP_MS:
            # The publisher was silent (muted) a while: start a fresh decode path rather
            # than have the old one conceal every 20 ms of the gap in one tick.
            self._inbox.clear()
            self._fresh_path = True
        self._inbox.append((view.seq, view.timestamp, bytes(view.payload), now_ms, view.payload_type))
        self._last_packet_ms = now_ms
        if self.timer and self._handle is None:
            self._handle = self.loop.call_later(self.tick_ms / 1000.0, self._tick)  # type: ignore[union-attr]

    def on_sender_report(self, layer: int, ntp: int, rtp_timestamp: int, now_ms: float) -> None:
        if layer == 0:
            self.clock.on_sender_report(ntp, rtp_timestamp)

    def on_track_closed(self) -> None:
        self.close()

    # -- the batch (event loop timer, or a test calling it) ------------------------------
    def on_timer(self, now_ms: float) -> None:
        """Decode what arrived, segment it, queue recognizer work; cheap and bounded."""
        if self.closed:
            return
        self._drain_inbox()
        for frame in self.path.pull_frames(now_ms):
            if frame.timestamp is None:
                continue  # a stretch frame: it belongs to no time, recognition needs none
            self.frames += 1
            self._on_events(self.segmenter.feed(frame.pcm, frame.timestamp), frame.timestamp)
        last = self._last_packet_ms
        if last is not None and now_ms - last > IDLE_STOP_MS and self.segmenter.active:
            self._on_events(self.segmenter.flush(), None)
        self._flush_audio()
        self._maybe_speculate()
        self._check_load()

    def close(self, *, flush: bool = True) -> None:
        """Stop; with `flush`, the utterance in progress still gets its final (later)."""
        if self.closed:
            return
        if flush:
            now = self._last_packet_ms if self._last_packet_ms is not None else 0.0
            self.on_timer(now + self.path.jitter.max_delay_ms)
            self._on_events(self.segmenter.flush(), None)
            self._flush_audio()
        self.closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._inbox.clear()
        if not flush:
            self._muted = True
            self.lane.close()
        else:
            self.lane.submit(self.lane.close)
        if self._on_closed is not None:
            self._on_closed(self)

    @property
    def busy(self) -> bool:
        """Recognizer work of this track is queued or running (results may still come)."""
        return bool(self.lane.depth or self.lane.running or self._detached)

    def _submit_detached(self, job: Callable[[], None]) -> bool:
        def run() -> None:
            try:
                job()
            finally:
                with self._detached_lock:
                    self._detached -= 1

        with self._detached_lock:
            self._detached += 1
        if self.pool.submit_detached(run):
            return True
        with self._detached_lock:
            self._detached -= 1
        return False

    def stats(self) -> dict[str, float]:
        return {
            "packets": self.packets,
            "inbox_dropped": self.inbox_dropped,
            "utterances": self.utterances,
            "dropped_segments": self.dropped_segments,
            "finals": self.finals,
            "partials": self.partials,
            "queue_depth": self.lane.depth,
            "paused": float(self.paused),
            "lagging": float(self.lagging),
        }

    # -- internals -----------------------------------------------------------------------
    def _tick(self) -> None:
        self._handle = None
        if self.closed or self.loop is None:
            return
        now_ms = self.loop.time() * 1000.0
        self.on_timer(now_ms)
        last = self._last_packet_ms
        idle = last is None or now_ms - last > IDLE_STOP_MS
        if not (idle and not self.segmenter.active and not self._inbox):
            self._handle = self.loop.call_later(self.tick_ms / 1000.0, self._tick)

    def _new_path(self) -> AudioDecodePath:
        return AudioDecodePath(sample_rate=16000, channels=1, clock_rate=self.clock_rate, min_delay_ms=40.0)

    def _drain_inbox(self) -> None:
        if self._fresh_path:
            self._fresh_path = False
            if self.segmenter.active:
                self._on_events(self.segmenter.flush(), None)
            self.path = self._new_path()
        path, clock, offset = self.path, self.clock, self.unix_offset_s
        while self._inbox:
            seq, ts, payload, arrival_ms, pt = self._inbox.popleft()
            if self._is_red(pt, payload):
                path.put_red(seq, ts, payload, arrival_ms, self.opus_pt)
            else:
                path.put(seq, ts, payload, arrival_ms)
            if offset is not None:
                clock.on_arrival(ts, offset + arrival_ms / 1000.0)

    def _is_red(self, pt: int, payload: bytes) -> bool:
        """RED (RFC 2198) or plain Opus? Told by `red_pt`, else learned once per payload type.

        Without `red_pt`, a packet whose payload type is not `opus_pt` is RED when it
        parses as RED with an Opus primary block (Chrome's RED wraps every audio packet).
        """
        if self.red_pt is not None:
            return pt == self.red_pt
        if pt == self.opus_pt:
            return False
        known = self._red_pts.get(pt)
        if known is None:
            try:
                blocks = parse_red(payload)
                known = blocks[-1].payload_type == self.opus_pt
            except (ValueError, IndexError):
                known = False
            self._red_pts[pt] = known
        return known

    def _unix_ms(self, ts: int) -> int:
        ms = self.clock.to_unix_ms(ts)
        if ms is None:  # no packet mapping yet (no offset given, no report): best effort
            ms = round(time.time() * 1000.0)
        return ms

    def _on_events(self, events: list[SegmentEvent], ts: int | None) -> None:
        for ev in events:
            if ev.kind == "start":
                self._start(ev)
            elif ev.kind == "audio":
                utt = self._utt
                if utt is not None and not utt.skipped and ev.pcm is not None:
                    utt.pending.append(ev.pcm)
                    utt.fed_ms += 20
                    if ts is not None:
                        utt.last_ts = ts
            elif ev.kind == "end":
                self._end(ev.ts)
            elif ev.kind == "drop":
                self._drop()

    def _start(self, ev: SegmentEvent) -> None:
        self._seq += 1
        self.utterances += 1
        utt = _Utterance(self._seq, ev.ts, last_ts=ev.ts)
        self._utt = utt
        if self.paused:
            utt.skipped = True
            self.dropped_segments += 1
            self._resolve(utt.seq, None)
            return
        assert ev.pcm is not None
        utt.pending.append(ev.pcm)
        utt.fed_ms = len(ev.pcm) // 16
        rec = self.recognizer
        self.lane.submit(rec.start)

    def _flush_audio(self) -> None:
        """Hand the tick's audio of the open utterance to the lane; a partial when due.

        At most one feed job per utterance waits in the lane at a time: audio that
        comes while one waits joins it (a slow worker sees one big feed, not many).
        """
        utt = self._utt
        if utt is None or utt.skipped or not utt.pending:
            return
        pcm = np.concatenate(utt.pending) if len(utt.pending) > 1 else utt.pending[0]
        utt.pending = []
        with utt.lock:
            utt.inq.append(pcm)
            need_job = not utt.feed_queued
            utt.feed_queued = True
        if need_job:
            self.lane.submit(lambda: self._feed(utt))
        backend = self.backend
        if backend.snapshot_partials:
            utt.audio.append(pcm)
        if utt.fed_ms - utt.partial_at_ms < backend.partial_every_ms:
            return
        if backend.snapshot_partials:
            if utt.partial_running or not self.pool.quiet or self.lane.heavy:
                return
            utt.partial_at_ms = utt.fed_ms
            self._snapshot_partial(utt)
            return
        if self.lane.heavy:
            return  # the last partial has not run yet: never queue partials behind it
        utt.partial_at_ms = utt.fed_ms
        start_ms, end_ms = self._partial_span(utt)

        def partial() -> None:
            self._feed(utt)
            self._partial_result(utt, self.recognizer.partial(), start_ms, end_ms)

        self.lane.submit(partial, heavy=True)

    def _partial_span(self, utt: _Utterance) -> tuple[int, int]:
        return self._unix_ms(utt.start_ts), self._unix_ms(utt.last_ts + self.clock_rate // 50)

    def _maybe_speculate(self) -> None:
        """At a pause, start the final early (snapshot backends): if the pause turns out
        to be the end, the final is ready up to a hangover sooner."""
        utt, seg = self._utt, self.segmenter
        if utt is None or utt.skipped or not self.backend.snapshot_partials:
            return
        if seg.silent_ms < SPECULATE_AFTER_MS or utt.spec_end == seg.last_voiced_end:
            return
        if not self.pool.free_core or self.lane.heavy:
            return
        utt.spec_end = end = seg.last_voiced_end
        utt.spec_text = None
        snapshot = list(utt.audio)
        drop = _tail_to_drop(seg.silent_ms)
        start_ms, end_ms = self._unix_ms(utt.start_ts), self._unix_ms(end)
        rec = self.recognizer

        def speculate() -> None:
            try:
                pcm = np.concatenate(snapshot)
                text = rec.partial_of(pcm[: len(pcm) - drop] if drop < len(pcm) else pcm)
            except Exception:
                log.exception("caption pass failed")
                text = ""
            with utt.lock:
                if utt.spec_end != end:
                    return  # the speaker went on: a newer pass (or none) stands
                utt.spec_text = text
                wanted = utt.spec_wanted
            if wanted is not None:
                utt.finalized = True
                self._final_result(utt, text, *wanted)
            else:
                self._partial_result(utt, text, start_ms, end_ms)

        if not self._submit_detached(speculate):
            utt.spec_end = None

    def _final_result(self, utt: _Utterance, text: str, start_ms: int, end_ms: int) -> None:
        """Any thread: resolve `utt` with its final (or nothing: no text, no partial shown)."""
        with utt.lock:
            shown = utt.partial_sent
        caption = None
        if text or shown:
            caption = Caption(self.participant_sid, self.track_sid, self.identity, text, True,
                              start_ms, end_ms, utt.seq)
        self._post_resolution(utt.seq, caption)

    def _snapshot_partial(self, utt: _Utterance) -> None:
        """A partial from a copy of the audio so far, beside the lane (Whisper)."""
        snapshot = list(utt.audio)
        start_ms, end_ms = self._partial_span(utt)
        rec = self.recognizer
        utt.partial_running = True

        def partial() -> None:
            try:
                if not utt.finalized:
                    self._partial_result(utt, rec.partial_of(np.concatenate(snapshot)), start_ms, end_ms)
            finally:
                utt.partial_running = False

        if not self._submit_detached(partial):
            utt.partial_running = False

    def _partial_result(self, utt: _Utterance, text: str, start_ms: int, end_ms: int) -> None:
        """Worker: post a partial that says something new (and not after the final)."""
        with utt.lock:  # against _drop: a partial is either retracted or never posted
            if not text or text == utt.last_partial or utt.finalized:
                return
            utt.last_partial = text
            utt.partial_sent = True
            self._post(Caption(self.participant_sid, self.track_sid, self.identity, text, False,
                               start_ms, end_ms, utt.seq))

    def _feed(self, utt: _Utterance) -> None:
        """Worker: feed the recognizer what the loop queued for `utt`."""
        with utt.lock:
            chunks, utt.inq = utt.inq, []
            utt.feed_queued = False
        if chunks:
            self.recognizer.feed(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])

    def _end(self, end_ts: int) -> None:
        self._flush_audio()
        utt, self._utt = self._utt, None
        if utt is None or utt.skipped:
            return
        rec = self.recognizer
        start_ms, end_ms = self._unix_ms(utt.start_ts), self._unix_ms(end_ts)
        if utt.spec_end == end_ts:  # a pass over exactly this utterance is done or running
            with utt.lock:
                text = utt.spec_text
                if text is None:
                    utt.spec_wanted = (start_ms, end_ms)  # it posts the final when done
            if text is not None:
                utt.finalized = True
                self._final_result(utt, text, start_ms, end_ms)  # posted: ordered on the loop
            self.lane.submit(rec.cancel)  # the recognizer's copy of the audio is not needed
            return

        # The audio ends a hangover after the last voiced frame; keep only as much of that
        # silence as a speculative pass keeps, so the final reads the same audio whichever
        # pass makes it (Whisper's words change with the length of trailing silence).
        drop = _tail_to_drop((utt.last_ts + self.clock_rate // 50 - end_ts) * 1000 // self.clock_rate)

        def final() -> None:
            text = ""
            try:
                self._feed(utt)
                text = rec.final(drop)
            finally:  # an utterance is always resolved: later finals wait for it
                utt.finalized = True
                self._final_result(utt, text, start_ms, end_ms)

        self.lane.submit(final, heavy=True)

    def _drop(self) -> None:
        utt, self._utt = self._utt, None
        if utt is None or utt.skipped:
            return
        with utt.lock:
            utt.finalized = True  # no partial of it is posted from now on
            utt.spec_end = None
            utt.inq = []
        rec = self.recognizer
        start_ms, end_ms = self._unix_ms(utt.start_ts), self._unix_ms(utt.last_ts)

        def cancel() -> None:
            try:
                rec.cancel()
            finally:
                self._final_result(utt, "", start_ms, end_ms)  # retracts what was shown

        self.lane.submit(cancel)

    def _post(self, caption: Caption) -> None:
        """From a worker thread: deliver on the loop (or inline without one)."""
        if self.loop is None:
            self._deliver(caption)
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver, caption)
        except RuntimeError:  # the loop is closed: nobody to tell
            pass

    def _post_resolution(self, seq: int, caption: Caption | None) -> None:
        """Any thread: utterance `seq` is done (its final, or None); see `_resolve`."""
        if self.loop is None:
            self._resolve(seq, caption)
            return
        try:
            self.loop.call_soon_threadsafe(self._resolve, seq, caption)
        except RuntimeError:
            pass

    def _resolve(self, seq: int, caption: Caption | None) -> None:
        """Loop: finals go out in utterance order (an early-started final of utterance 2
        waits for utterance 1's), each utterance resolved exactly once."""
        self._resolved[seq] = caption
        while self._next_final in self._resolved:
            done = self._resolved.pop(self._next_final)
            self._next_final += 1
            if done is not None:
                self._deliver(done)

    def _deliver(self, caption: Caption) -> None:
        if self._muted:
            return
        if not caption.final and caption.seq < self._next_final:
            return  # a snapshot partial that finished after its final
        if caption.final:
            self.finals += 1
        else:
            self.partials += 1
        self.on_caption(caption)

    def _status(self, status: str) -> None:
        if self.on_status is not None:
            self.on_status(self.track_sid, status)

    def _check_load(self) -> None:
        lane = self.lane
        wait, depth = lane.oldest_wait_s(), lane.heavy
        if self.paused:
            if depth == 0 and not lane.running:
                self.paused = self.lagging = False
                self._status("resumed")
            return
        if wait > PAUSE_S or lane.heavy > MAX_HEAVY:
            self.paused = True
            self._status("paused")
        elif wait > LAG_S and not self.lagging:
            self.lagging = True
            self._status("lagging")
        elif self.lagging and wait < LAG_S / 2 and depth <= 2:
            self.lagging = False
            self._status("resumed")
