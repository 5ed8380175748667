"""The composite of a recording, frame by frame: who is on screen, what they show and say.

Time: composite time 0 is `t0` (Unix seconds): the earliest track start offline,
the recording's start live. A track's file time 0 is its manifest `first_unix`
(the RTP-to-wall-clock mapping from sender reports), so a frame at file time `t`
belongs at composite time `first_unix - t0 + t`: tracks from different senders,
and a sender's audio and video, line up to within a frame. Output frame `k` is
composite time `k / fps` and its audio is the samples from `k * 48000 / fps` on.

A person is on screen while any of their tracks is (first to last frame, or to the
recording's stop for tracks still live then: everyone leaves the picture together); they
get a tile with their camera, or a name card while there is none (audio only, a
camera muted (the manifest's mute spans), a video gap of more than `CAMERA_HOLD_S`). A screen share takes
the big tile. The loudest person over the last 0.4 s gets a highlighted border.
Decoders start a second before a track is due and stop after it ends.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from . import manifest as mf
from .compose_audio import Limiter, Speakers
from .compose_draw import Canvas
from .compose_layout import Rect, layout
from .compose_sources import RATE, AudioTrack, Feed, TailFile, VideoTrack

__all__ = ["Scene", "is_screen"]

CAMERA_HOLD_S = 1.0  # a camera frame older than this is a gap: show the name card
STOP_SLACK_S = 0.5  # a track whose last media is this close to the recording's stop was live at the stop
SPEAKER_WINDOW_S = 0.4
PRELOAD_S = 1.0


def is_screen(source: str) -> bool:
    return source in ("screen", "screen_share")


@dataclass(slots=True)
class TrackState:
    entry: mf.TrackEntry
    offset_s: float  # composite time of the file's time 0
    end_s: float | None  # composite time of its end (None: still recording, live)
    feed: Feed | None = None
    video: VideoTrack | None = None
    audio: AudioTrack | None = None
    tail: TailFile | None = None
    done: bool = False  # decoded and past its end: never started again


@dataclass(slots=True)
class Person:
    key: str
    name: str
    tracks: list[TrackState] = field(default_factory=list)


class Scene:
    """Renders composite frames and audio chunks from a recording directory."""

    def __init__(self, directory: str | os.PathLike[str], *, width: int = 1280, height: int = 720,
                 fps: float = 25.0, live: bool = False, t0: float | None = None) -> None:
        if width % 2 or height % 2:
            raise ValueError("width and height must be even (YUV 4:2:0)")
        self.directory = Path(directory)
        self.width, self.height, self.fps = width, height, fps
        self.live = live
        self.t0 = t0
        self.canvas = Canvas(width, height)
        self.limiter = Limiter(RATE)
        self.speakers = Speakers(round(SPEAKER_WINDOW_S * fps))
        self.people: dict[str, Person] = {}
        self.tracks: dict[str, TrackState] = {}  # by file
        self.speaker: str | None = None
        self.last_layout: dict[str, Rect] = {}
        self._layouts: dict[tuple[tuple[str, ...], str | None], dict[str, Rect]] = {}

    # -- the recording ---------------------------------------------------------------
    def update(self, manifest: mf.Manifest) -> None:
        """Take in a (re)read manifest: new people and tracks, newer timing, closed files."""
        timed = [t for t in manifest.tracks if t.first_unix is not None and t.first_rtp is not None]
        if self.t0 is None:
            starts = [t.first_unix for t in timed if t.first_unix is not None]
            self.t0 = min(starts) if starts else manifest.started_unix
        for p in manifest.participants:
            person = self.people.setdefault(p.sid, Person(p.sid, p.name or p.identity))
            person.name = p.name or p.identity
        for entry in timed:
            assert entry.first_unix is not None
            offset = entry.first_unix - self.t0
            end = None
            if entry.last_unix is not None and (entry.closed or not self.live):
                end = entry.last_unix - self.t0 + (1.0 / self.fps if entry.kind == "video" else 0.02)
                stop = manifest.stopped_unix
                if stop is not None and stop - entry.last_unix < STOP_SLACK_S:
                    # Live at the stop: on screen to the end, so that tracks whose last packets
                    # came a frame apart do not reflow the layout in the final frames.
                    end = max(end, stop - self.t0)
            state = self.tracks.get(entry.file)
            if state is None:
                state = self.tracks[entry.file] = TrackState(entry, offset, end)
                person = self.people.setdefault(entry.participant_sid,
                                                Person(entry.participant_sid, entry.participant_sid))
                person.tracks.append(state)
            state.entry, state.offset_s, state.end_s = entry, offset, end
            if state.tail is not None and entry.closed:
                state.tail.finish()

    @property
    def duration_s(self) -> float:
        """Composite length (offline): up to the last track's end."""
        ends = [t.end_s for t in self.tracks.values() if t.end_s is not None]
        return max(ends, default=0.0)

    def close(self) -> None:
        for state in self.tracks.values():
            self._stop(state)

    # -- per output frame ------------------------------------------------------------
    def audio(self, k: int) -> np.ndarray:
        """The mixed chunk for frame `k` (call before `video(k)`: it finds the speaker)."""
        start = round(k * RATE / self.fps)
        n = round((k + 1) * RATE / self.fps) - start
        now = k / self.fps
        mix = np.zeros(n, np.float32)
        per_person: dict[str, np.ndarray] = {}
        for person in self.people.values():
            total = None
            for state in person.tracks:
                if state.entry.kind != "audio" or not self._running(state, now):
                    continue
                assert state.audio is not None
                chunk = state.audio.read(start - round(state.offset_s * RATE), n)
                total = chunk if total is None else total + chunk
            if total is not None:
                mix += total
                per_person[person.key] = total
        self.speaker = self.speakers.update(per_person)
        return self.limiter.process(mix)

    def video(self, k: int) -> av.VideoFrame:
        """The composite picture at composite time `k / fps`."""
        now = k / self.fps
        canvas = self.canvas
        canvas.clear()
        shown: list[Person] = []
        screen: tuple[Person, TrackState] | None = None
        for person in self.people.values():
            on = False
            for state in person.tracks:
                if state.entry.kind == "video":
                    self._running(state, now)  # starts decoding a second early, stops after
                if not self._within(state, now):
                    continue
                on = True
                if state.entry.kind == "video" and is_screen(state.entry.source):
                    if screen is None or state.offset_s > screen[1].offset_s:
                        screen = (person, state)
            if on:
                shown.append(person)
        screen_key = f"screen:{screen[1].entry.file}" if screen else None
        tiles = self._layout([p.key for p in shown], screen_key)
        self.last_layout = tiles
        if screen is not None and screen_key is not None:
            person, state = screen
            self._tile(tiles[screen_key], f"{person.name} (screen)", state, now, hold=math.inf)
        for person in shown:
            box = tiles[person.key]
            camera = self._camera(person, now)
            self._tile(box, person.name, camera, now, hold=CAMERA_HOLD_S)
            if person.key == self.speaker:
                canvas.border(box)
        return canvas.frame()

    # -- internals -------------------------------------------------------------------
    def _tile(self, box: Rect, name: str, state: TrackState | None, now: float, hold: float) -> None:
        frame = None
        if state is not None and self._muted(state, now):
            state = None  # the publisher muted it: their card at once, not a frozen picture
        if state is not None and state.feed is not None and state.video is not None:
            state.video.hold_s = hold
            frame = state.video.frame_at(now - state.offset_s)
        if frame is None:
            self.canvas.card(box, name)
        else:
            self.canvas.video(id(state), frame, box)
        self.canvas.label(box, name)

    def _camera(self, person: Person, now: float) -> TrackState | None:
        """The person's camera (the one started last, if they published two) showing now."""
        best = None
        for state in person.tracks:
            if state.entry.kind == "video" and not is_screen(state.entry.source) and self._within(state, now):
                if best is None or state.offset_s > best.offset_s:
                    best = state
        return best

    def _layout(self, people: list[str], screen: str | None) -> dict[str, Rect]:
        key = (tuple(people), screen)
        tiles = self._layouts.get(key)
        if tiles is None:
            tiles = self._layouts[key] = layout(self.width, self.height, people, screen)
        return tiles

    def _muted(self, state: TrackState, now: float) -> bool:
        """Within one of the track's mute spans (manifest `muted`, Unix times)."""
        assert self.t0 is not None
        wall = self.t0 + now
        for span in state.entry.muted:
            start, end = span[0], span[1] if len(span) > 1 else None
            if start is not None and start <= wall and (end is None or wall < end):
                return True
        return False

    def _within(self, state: TrackState, now: float) -> bool:
        return state.offset_s <= now and (state.end_s is None or now < state.end_s)

    def _running(self, state: TrackState, now: float) -> bool:
        """Whether the track's decoder is (made) ready for `now`; stops it when past its end."""
        if state.done:
            return False
        if now < state.offset_s - PRELOAD_S:
            return False
        if state.end_s is not None and now > state.end_s + PRELOAD_S:
            self._stop(state)
            state.done = True
            return False
        if state.feed is None:
            self._start(state)
        return True

    def _start(self, state: TrackState) -> None:
        path = self.directory / state.entry.file
        source: str | TailFile
        if self.live:
            state.tail = TailFile(path)
            if state.entry.closed:
                state.tail.finish()
            source = state.tail
        else:
            source = str(path)
        kind = state.entry.kind
        state.feed = Feed(source, kind, live=self.live)
        if kind == "video":
            state.video = VideoTrack(state.feed, self.fps, CAMERA_HOLD_S)
        else:
            state.audio = AudioTrack(state.feed)

    def _stop(self, state: TrackState) -> None:
        if state.feed is not None:
            state.feed.close()
            state.feed = None
