"""One track's frames -> one file, with PyAV and no transcoding (runs on the writer thread).

Formats that stay readable when the process is killed (DESIGN §12): VP8 in WebM and
H.264 in Matroska with a cluster closed about every second, Opus in Ogg with pages
of at most half a second; `flush_packets` pushes each finished cluster or page to
the kernel at once, so a SIGKILL loses only what was not yet in a closed cluster.
The container is opened at the first frame (a keyframe): VP8 needs its size and
H.264 its SPS/PPS for the header. Timestamps are the frame's RTP timestamp minus the
first one, in the codec's clock (1/90000 or 1/48000); the muxer rounds WebM's to ms.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av

from .depacketize import h264_parameter_sets, vp8_size

__all__ = ["CODEC_FORMATS", "TrackFile"]

# codec -> (container format, file extension)
CODEC_FORMATS = {"vp8": ("webm", "webm"), "h264": ("matroska", "mkv"), "opus": ("ogg", "ogg")}
CLUSTER_MS = 1000  # Matroska: close a cluster (and flush it) at least this often
OGG_PAGE_US = 500_000  # Ogg: a page holds at most this much audio


class TrackFile:
    """A muxer for one track; `write` frames in timestamp order, then `close`.

    Not thread-safe: one writer thread owns it. The first error (a full disk: OSError
    ENOSPC; an `av.FFmpegError`) is raised for the caller to count, kept in `error`,
    and closes the file for good: what was flushed before it stays readable.
    """

    def __init__(self, path: str, codec: str, clock_rate: int) -> None:
        if codec not in CODEC_FORMATS:
            raise ValueError(f"cannot record codec {codec!r}; known: {sorted(CODEC_FORMATS)}")
        self.path = path
        self.codec = codec
        self.time_base = Fraction(1, clock_rate)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._last_pts: int | None = None
        self.frames = 0
        self.bytes = 0
        self.first_pts: int | None = None
        self.closed = False
        self.error: str | None = None

    def write(self, data: bytes, pts: int, keyframe: bool, duration: int = 0) -> None:
        """Mux one frame; `pts` in clock units, strictly increasing (others are skipped)."""
        if self.closed:
            return
        try:
            self._write(data, pts, keyframe, duration)
        except Exception as exc:
            self._fail(exc)
            raise

    def _write(self, data: bytes, pts: int, keyframe: bool, duration: int) -> None:
        if self._container is None:
            self._open(data)
        if self._last_pts is not None and pts <= self._last_pts:
            return  # the muxer refuses non-monotonic timestamps
        self._last_pts = pts
        if self.first_pts is None:
            self.first_pts = pts
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = self.time_base
        if duration:
            packet.duration = duration
        packet.is_keyframe = keyframe
        packet.stream = self._stream
        assert self._container is not None
        self._container.mux(packet)
        self.frames += 1
        self.bytes += len(data)

    @property
    def last_pts(self) -> int | None:
        return self._last_pts

    def close(self) -> None:
        """Finalize (durations, cues); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception as exc:
                self._fail(exc)
                raise

    def _fail(self, exc: Exception) -> None:
        """Remember the first error and drop the container without writing more."""
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
        self.closed = True
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()  # may fail again (the trailer): nothing more to save
            except Exception:  # noqa: S110 - the first error is the one reported
                pass

    def _open(self, first: bytes) -> None:
        fmt = CODEC_FORMATS[self.codec][0]
        options = {"flush_packets": "1"}
        if fmt == "ogg":
            options["page_duration"] = str(OGG_PAGE_US)
        else:
            options["cluster_time_limit"] = str(CLUSTER_MS)
        container = av.open(self.path, "w", format=fmt, options=options)
        self._container = container  # closed by _fail if the stream cannot be set up
        self._stream = self._add_stream(container, first)
        self._stream.time_base = self.time_base

    def _add_stream(self, container: av.container.OutputContainer, first: bytes) -> av.stream.Stream:
        if self.codec == "vp8":
            size = vp8_size(first) or (0, 0)
            return container.add_mux_stream("vp8", width=size[0], height=size[1])
        if self.codec == "h264":
            return container.add_stream_from_template(_h264_template(first))
        # Opus in Ogg needs an OpusHead (extradata); PyAV sets codec parameters only from
        # a codec context, so open a (cheap) libopus encoder for its header and never
        # feed it. Its pre-skip (312 samples) is in the header and in the granules alike.
        stream = container.add_stream("libopus", rate=48000)
        stream.codec_context.layout = "stereo"
        stream.codec_context.open()
        return stream


def _h264_template(first: bytes) -> av.stream.Stream:
    """A stream whose codec parameters (size, avcC from SPS/PPS) come from the first IDR.

    PyAV cannot set extradata on a mux-only stream, so the raw H.264 demuxer parses
    the access unit in memory and the output copies its parameters.
    """
    params = h264_parameter_sets(first)
    if params is None:
        raise ValueError("H.264 recording must start at an IDR with SPS and PPS")
    probe = av.open(io.BytesIO(first), format="h264")
    return probe.streams.video[0]
