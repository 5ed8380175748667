"""Prometheus metrics for one Ferry server.

**Pull, don't push.** Almost everything is read at scrape time from one snapshot callback
installed with :meth:`Metrics.set_engine_stats`. ``prometheus_client`` counters take a lock
and do a label lookup on every ``inc`` — far too slow at tens of thousands of packets per
second — so the media engine keeps plain ``int`` attributes (``media/stats.py``) and the
server hands us a callable that copies them into a dict. A custom collector calls it inside
:meth:`Metrics.render`, so the forward plane pays nothing for metrics, and the gauges
(rooms, participants, tracks, connections) can never drift from the real state because they
are counted on demand rather than maintained by ``inc``/``dec`` pairs.

The one push metric is ``ferry_signaling_errors_total{code}``: errors are events, not
state, and happen at request rate; call :meth:`Metrics.signaling_error`.

Snapshot dict (every key optional; a missing counter reads as 0, a missing gauge is
omitted)::

    # counters: cumulative, must never decrease. Alternative names accepted (first found).
    packets_in | udp_packets_in, bytes_in | udp_bytes_in,
    packets_out | udp_packets_out, bytes_out | udp_bytes_out,
    nack_received, rtx_sent, pli_sent,
    packet_drops | drops: {reason: int},
    rtp_in, rtp_bytes_in, rtp_out, rtp_bytes_out, rtx_missed, nack_sent, pli_received,
    keyframes_in, layer_switches
    # gauges
    rooms, participants, ws_connections, tracks_by_kind: {kind: int}
    # recorder (signaling.recording): counters, then gauges
    recordings_started, recorder_frames | recorder_dropped | recorder_bytes
    | recorder_packets | recorder_sink_s: {kind: number},
    recorder_errors, recorder_writer_cpu_s;
    recordings_active, recorder_queue, recorder_tracks: {kind: int}
    # captions (signaling.captions): counters, gauges, then labelled families
    captions_finals, captions_partials, captions_write_errors; captions_tracks,
    captions_rooms; captions_status: {state: int}, captions_latency: {buckets:
    [(upper bound s, cumulative count)], count, sum}, captions_engines: {backend: {name: float}}
    # room messages (signaling.messages_service): counters
    data_messages: {"true"|"false": int} (by reliable), data_bytes, data_commits

The callback runs on the event-loop thread during a scrape, so it must be cheap and must not
block. If it raises, the snapshot families are omitted from that scrape and the error is
logged, instead of failing the whole ``/metrics`` response.

Each server owns a private :class:`~prometheus_client.CollectorRegistry` (never the global
one) so tests can run several servers in one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "COUNTERS", "GAUGES", "EngineStats", "Metrics"]

log = logging.getLogger("ferry.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

EngineStats = Mapping[str, Any]

# metric name -> (snapshot keys, first found wins; help). Unlabelled monotonic counters.
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "ferry_packets_in_total": (("packets_in", "udp_packets_in"), "UDP datagrams received"),
    "ferry_bytes_in_total": (("bytes_in", "udp_bytes_in"), "UDP bytes received"),
    "ferry_packets_out_total": (("packets_out", "udp_packets_out"), "UDP datagrams sent"),
    "ferry_bytes_out_total": (("bytes_out", "udp_bytes_out"), "UDP bytes sent"),
    "ferry_udp_gso_messages_total": (
        ("udp_gso_messages",),
        "UDP GSO messages sent (a run of datagrams to one peer in one send)",
    ),
    "ferry_udp_gso_datagrams_total": (("udp_gso_datagrams",), "UDP datagrams sent inside GSO messages"),
    "ferry_nack_received_total": (("nack_received",), "Sequence numbers NACKed by subscribers"),
    "ferry_rtx_sent_total": (("rtx_sent",), "Retransmissions sent in answer to NACKs"),
    "ferry_pli_sent_total": (("pli_sent",), "Picture loss indications sent to publishers"),
    "ferry_rtp_packets_in_total": (("rtp_in",), "RTP packets received from publishers"),
    "ferry_rtp_bytes_in_total": (("rtp_bytes_in",), "RTP bytes received from publishers"),
    "ferry_rtp_packets_out_total": (("rtp_out",), "RTP packets forwarded to subscribers"),
    "ferry_rtp_bytes_out_total": (("rtp_bytes_out",), "RTP bytes forwarded to subscribers"),
    "ferry_rtx_missed_total": (("rtx_missed",), "NACKed packets no longer in the RTX cache"),
    "ferry_nack_sent_total": (("nack_sent",), "Sequence numbers NACKed to publishers"),
    "ferry_pli_received_total": (("pli_received",), "Picture loss indications from subscribers"),
    "ferry_keyframes_in_total": (("keyframes_in",), "Keyframes received from publishers"),
    "ferry_layer_switches_total": (("layer_switches",), "Simulcast layer switches"),
    "ferry_red_recovered_total": (
        ("red_recovered",),
        "Opus packets rebuilt from RED redundancy for subscribers without RED",
    ),
    "ferry_red_added_total": (("red_added",), "Audio packets Ferry wrapped in RED toward lossy subscribers"),
    "ferry_upstream_lost_total": (("upstream_lost",), "Publisher packets found missing"),
    "ferry_upstream_recovered_total": (("upstream_recovered",), "Missing publisher packets recovered by RTX"),
    "ferry_upstream_unrecovered_total": (("upstream_unrecovered",), "Missing publisher packets given up on"),
    "ferry_recordings_started_total": (("recordings_started",), "Room recordings started"),
    "ferry_recorder_errors_total": (("recorder_errors",), "Recorder writer jobs that failed (a full disk, a bad frame)"),
    "ferry_recorder_writer_cpu_seconds_total": (
        ("recorder_writer_cpu_s",),
        "CPU time of the recorders' writer threads (muxing, file I/O)",
    ),
    "ferry_captions_finals_total": (("captions_finals",), "Final captions sent (one per utterance)"),
    "ferry_captions_partials_total": (("captions_partials",), "Partial captions sent while someone speaks"),
    "ferry_captions_write_errors_total": (("captions_write_errors",), "Transcript writes that failed"),
    "ferry_data_bytes_total": (("data_bytes",), "Room message payload bytes sent (send_data), reliable or not"),
    "ferry_data_commits_total": (("data_commits",), "Message database commits (each one fsync; sends share them)"),
    "ferry_webhooks_sent_total": (("webhooks_sent",), "Webhook events delivered (2xx)"),
    "ferry_webhooks_failed_total": (("webhooks_failed",), "Webhook events given up on after every attempt"),
    "ferry_webhooks_dropped_total": (("webhooks_dropped",), "Webhook events dropped from a full queue"),
    "ferry_audit_entries_total": (("audit_written",), "Audit log entries written"),
    "ferry_audit_errors_total": (("audit_errors",), "Audit log writes that failed"),
    "ferry_moderation_actions_total": (("moderation_actions",), "Moderation actions done (signaling and REST)"),
}
DATA_MESSAGES = ("ferry_data_messages_total", "data_messages", "Room messages sent (send_data), by reliable true|false")
DROPS = ("ferry_packet_drops_total", ("packet_drops", "drops"), "Packets dropped, by reason")
# metric name -> (snapshot key, help). Monotonic counters labelled by track kind.
KIND_COUNTERS: dict[str, tuple[str, str]] = {
    "ferry_recorder_frames_total": ("recorder_frames", "Frames written to recording files, by track kind"),
    "ferry_recorder_dropped_total": (
        "recorder_dropped",
        "Frames a recording's full writer queue could not take, by track kind",
    ),
    "ferry_recorder_bytes_total": ("recorder_bytes", "Media bytes written to recording files, by track kind"),
    "ferry_recorder_packets_total": ("recorder_packets", "RTP packets handed to recorders, by track kind"),
    "ferry_recorder_sink_seconds_total": (
        "recorder_sink_s",
        "Event-loop time spent in recorder sinks (copy, reassembly, depacketizing), by track kind;"
        " divided by ferry_recorder_packets_total: the recorder's cost per packet to forwarding",
    ),
}

# metric name -> (snapshot key, help). Unlabelled gauges; omitted when the key is absent.
GAUGES: dict[str, tuple[str, str]] = {
    "ferry_rooms": ("rooms", "Rooms currently open"),
    "ferry_participants": ("participants", "Participants currently in a room"),
    "ferry_ws_connections": ("ws_connections", "Open signaling WebSocket connections"),
    "ferry_quic_connections": ("quic_connections", "Open QUIC signaling connections (raw QUIC and WebTransport)"),
    "ferry_recordings_active": ("recordings_active", "Rooms being recorded"),
    "ferry_recorder_queue": ("recorder_queue", "Jobs waiting for the recorders' writer threads"),
    "ferry_captions_active_tracks": ("captions_tracks", "Audio tracks being captioned now"),
    "ferry_captions_rooms": ("captions_rooms", "Rooms with captions on"),
    "ferry_native_send_path": (
        "native_send_path",
        "1: media is sent through the C extension (SRTP protect + sendmmsg per batch); 0: Python sendto",
    ),
    "ferry_udp_gso": (
        "udp_gso",
        "1: runs of datagrams to one peer leave as UDP GSO messages; 0: off, or refused by the kernel",
    ),
}
TRACKS = ("ferry_tracks", "tracks_by_kind", "Published tracks currently live, by kind")
RECORDER_TRACKS = ("ferry_recorder_tracks", "recorder_tracks", "Tracks being recorded now, by kind")
CAPTIONS_STATUS = (
    "ferry_captions_status_total",
    "captions_status",
    "Captioner status changes by state: lagging (behind the audio), paused (dropping audio), resumed",
)
CAPTIONS_LATENCY = (
    "ferry_captions_latency_seconds",
    "captions_latency",
    "From the end of an utterance (its audio, by RTP time) to its final caption going out",
)
CAPTIONS_ENGINE = ("ferry_captions_engine", "captions_engines", "The caption engines' own figures, by backend")


def _first(stats: EngineStats, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in stats:
            return stats[key]
    return None


class _SnapshotCollector(Collector):
    """Turns the snapshot dict into metric families on each scrape."""

    def __init__(self) -> None:
        self.source: Callable[[], EngineStats] | None = None

    def describe(self) -> list[Metric]:
        # Explicit (empty) describe: the registry must not call collect() at register time,
        # when the callback may not exist yet.
        return []

    def collect(self) -> Iterator[Metric]:
        stats: EngineStats = {}
        if self.source is not None:
            try:
                stats = self.source()
            except Exception:
                log.exception("engine stats callback failed; omitting media metrics")
                return
        for name, (key, doc) in GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(name, doc, value=float(stats[key]))
        tracks = GaugeMetricFamily(TRACKS[0], TRACKS[2], labels=["kind"])
        for kind, count in sorted(dict(stats.get(TRACKS[1]) or {}).items()):
            tracks.add_metric([str(kind)], float(count))
        yield tracks
        if RECORDER_TRACKS[1] in stats:
            recording = GaugeMetricFamily(RECORDER_TRACKS[0], RECORDER_TRACKS[2], labels=["kind"])
            for kind, count in sorted(dict(stats[RECORDER_TRACKS[1]]).items()):
                recording.add_metric([str(kind)], float(count))
            yield recording
        for name, (key, doc) in KIND_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["kind"])
            for kind, count in sorted(dict(stats.get(key) or {}).items()):
                family.add_metric([str(kind)], float(count))
            yield family
        yield from _caption_families(stats)
        for name, (keys, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(_first(stats, keys) or 0))
        data = CounterMetricFamily(DATA_MESSAGES[0], DATA_MESSAGES[2], labels=["reliable"])
        for reliable, count in sorted(dict(stats.get(DATA_MESSAGES[1]) or {}).items()):
            data.add_metric([str(reliable)], float(count))
        yield data
        drops = CounterMetricFamily(DROPS[0], DROPS[2], labels=["reason"])
        for reason, count in sorted(dict(_first(stats, DROPS[1]) or {}).items()):
            drops.add_metric([str(reason)], float(count))
        yield drops


def _caption_families(stats: EngineStats) -> Iterator[Metric]:
    """Captions (signaling.captions): status changes, the latency histogram, engine figures."""
    if CAPTIONS_STATUS[1] in stats:
        family = CounterMetricFamily(CAPTIONS_STATUS[0], CAPTIONS_STATUS[2], labels=["state"])
        for state, count in sorted(dict(stats[CAPTIONS_STATUS[1]]).items()):
            family.add_metric([str(state)], float(count))
        yield family
    latency = stats.get(CAPTIONS_LATENCY[1])
    if latency:
        buckets = [(f"{bound:g}", float(count)) for bound, count in latency["buckets"]]
        buckets.append(("+Inf", float(latency["count"])))
        yield HistogramMetricFamily(
            CAPTIONS_LATENCY[0], CAPTIONS_LATENCY[2], buckets=buckets, sum_value=float(latency["sum"])
        )
    if CAPTIONS_ENGINE[1] in stats:
        family = GaugeMetricFamily(CAPTIONS_ENGINE[0], CAPTIONS_ENGINE[2], labels=["backend", "name"])
        for backend, figures in sorted(dict(stats[CAPTIONS_ENGINE[1]]).items()):
            for name, value in sorted(dict(figures).items()):
                family.add_metric([str(backend), str(name)], float(value))
        yield family


class Metrics:
    """All metrics of one server, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.signaling_errors = Counter(
            "ferry_signaling_errors",
            "Signaling requests answered with an error, by protocol error code",
            ["code"],
            registry=self.registry,
        )
        self._snapshot = _SnapshotCollector()
        self.registry.register(self._snapshot)

    def signaling_error(self, code: str) -> None:
        """Count one error reply/event (usable directly as a session ``on_error`` hook)."""
        self.signaling_errors.labels(code=code).inc()

    def set_engine_stats(self, source: Callable[[], EngineStats] | None) -> None:
        """Install (or with ``None`` remove) the scrape-time snapshot callback."""
        self._snapshot.source = source

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric; calls the snapshot callback."""
        return generate_latest(self.registry)
