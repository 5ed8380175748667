"""One recording of a room: a directory, a writer thread, a TrackRecorder per track.

Sans-I/O towards the event loop: the shell passes `now_ms` (monotonic) and the
one-off `unix_offset_s` (wall minus monotonic), and calls `on_timer`. All file I/O,
the manifest included, runs on the recording's writer thread, in order. The
manifest is rewritten when tracks come and go, when a track's first frame fixes
its timing, and every few seconds while recording, so a crash leaves one that
lists every file and its timing up to then.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from media.routing.sink import SinkHost

from . import manifest as mf
from .mux import CODEC_FORMATS
from .track_recorder import TrackRecorder
from .worker import MuxWorker

__all__ = ["Recording"]

MANIFEST_INTERVAL_MS = 5000.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of an identity or sid (no separators, no dot files)."""
    return _UNSAFE.sub("_", text).strip("._")[:64] or "x"


class Recording:
    """Records a room's tracks into `directory` (created; must not hold a recording yet)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        room: str,
        recording_id: str,
        unix_offset_s: float,
        now_ms: float,
        worker: MuxWorker | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / mf.MANIFEST).exists():
            raise FileExistsError(f"{self.directory} already holds a recording")
        self.unix_offset_s = unix_offset_s
        self.worker = worker or MuxWorker(name=f"ferry-rec-{safe_name(recording_id)}")
        self.manifest = mf.Manifest(
            room=room, id=recording_id, started_unix=unix_offset_s + now_ms / 1000.0
        )
        self.tracks: dict[str, TrackRecorder] = {}
        self._identities: dict[str, str] = {}
        self._next_manifest_ms = now_ms + MANIFEST_INTERVAL_MS
        self._timed: set[str] = set()  # tracks whose first frame the manifest has
        self.stopped = False
        mf.save(self.directory, self.manifest)  # on the caller: fails loudly if unwritable

    def add_participant(self, sid: str, identity: str, name: str = "") -> None:
        if sid not in self._identities:
            self._identities[sid] = identity
            self.manifest.participants.append(mf.ParticipantEntry(sid, identity, name))

    def add_track(
        self,
        *,
        sid: str,
        participant_sid: str,
        kind: str,
        source: str,
        codec: str,
        clock_rate: int,
        layers: int = 1,
        red_pt: int | None = None,
        host: SinkHost | None = None,
    ) -> TrackRecorder:
        """A sink recording this track; the caller attaches it (`track.add_sink`)."""
        codec = codec.lower()
        if codec not in CODEC_FORMATS:
            raise ValueError(f"cannot record codec {codec!r}; known: {sorted(CODEC_FORMATS)}")
        who = safe_name(self._identities.get(participant_sid, participant_sid))
        ext = CODEC_FORMATS[codec][1]
        name = f"{who}_{safe_name(sid)}.{ext}"
        n = 1
        while any(t.entry.file == name for t in self.tracks.values()):
            n += 1
            name = f"{who}_{safe_name(sid)}_{n}.{ext}"
        entry = mf.TrackEntry(
            sid=sid,
            participant_sid=participant_sid,
            kind=kind,
            source=source,
            codec=codec,
            file=name,
            clock_rate=clock_rate,
        )
        recorder = TrackRecorder(
            entry,
            self.directory,
            self.worker,
            host=host,
            layers=layers,
            red_pt=red_pt,
            unix_offset_s=self.unix_offset_s,
        )
        key = sid if sid not in self.tracks else f"{sid}#{len(self.tracks)}"  # republished
        self.tracks[key] = recorder
        self.manifest.tracks.append(entry)
        self._save()
        return recorder

    def remove_track(self, sid: str, now_ms: float) -> None:
        """The track was unpublished: finalize its file (the entry stays in the manifest)."""
        for recorder in self.tracks.values():
            if recorder.entry.sid == sid:
                recorder.close(now_ms)
        self._save()

    def on_timer(self, now_ms: float) -> None:
        if self.stopped:
            return
        for recorder in self.tracks.values():
            recorder.on_timer(now_ms)
        # A track that just started gets its timing into the manifest at once: a live
        # renderer (recorder.hls) cannot place it before.
        fresh = [key for key, r in self.tracks.items() if r.started and key not in self._timed]
        self._timed.update(fresh)
        if now_ms >= self._next_manifest_ms or fresh:
            self._next_manifest_ms = now_ms + MANIFEST_INTERVAL_MS
            self._save()

    def stop(self, now_ms: float, timeout_s: float = 10.0) -> mf.Manifest:
        """Finalize every file and the manifest; blocks up to `timeout_s` for the writer.

        Call it from a thread (or an executor) when the loop must not wait.
        """
        if not self.stopped:
            self.stopped = True
            for recorder in self.tracks.values():
                recorder.close(now_ms)
            self.manifest.state = "stopped"
            self.manifest.stopped_unix = self.unix_offset_s + now_ms / 1000.0
            self._save()
            self.worker.close(timeout_s)
            for recorder in self.tracks.values():
                recorder.snapshot()  # the writer is done: its errors are final
        return self.manifest

    def stats(self) -> dict[str, object]:
        """Counters for /metrics and the bench: per-recording writer figures."""
        return {
            "tracks": len(self.tracks),
            "queue": self.worker.pending,
            "dropped": self.worker.dropped,
            "errors": self.worker.errors,
            "writer_cpu_s": self.worker.cpu_s,
        }

    def _save(self) -> None:
        """Queue a manifest rewrite with a snapshot taken now, on the loop."""
        for recorder in self.tracks.values():
            recorder.snapshot()
        snapshot = copy.deepcopy(self.manifest)
        self.worker.submit(self._write_manifest, snapshot, essential=True)

    def _write_manifest(self, snapshot: mf.Manifest) -> None:
        # Runs after the jobs queued before it: a closed track's duration is known.
        by_file = {t.entry.file: t for t in self.tracks.values()}
        for track in snapshot.tracks:
            live = by_file.get(track.file)
            if live is None:
                continue
            track.error = live.file.error
            if live.entry.closed:
                track.closed, track.duration_s = True, live.entry.duration_s
        mf.save(self.directory, snapshot)
