"""getStats of aiortc peer connections, shaped for ``FerryClient.stats()``."""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from . import nack_repeat, video_jitter
from .sink import TrackKey, TrackSink


def _received(transceiver: Any, sink: TrackSink | None) -> dict[str, Any]:
    """A received track's decode counters and, for video, its loss recovery."""
    out = sink.summary() if sink is not None else {}
    if transceiver.kind == "video":
        out.update(_recovery(transceiver.receiver))
    return out


def _recovery(receiver: Any) -> dict[str, int | None]:
    """What the receive path did about loss: packets NACKed again, holes waited out
    (each ends in a keyframe), holes a keyframe after them ended, and frames dropped
    waiting for a keyframe."""
    generator, buffer = nack_repeat.generator_of(receiver), video_jitter.buffer_of(receiver)
    return {
        "nacksRepeated": generator.repeated if generator else None,
        "holesGivenUp": buffer.gave_up if buffer else None,
        "holesSkippedToKeyframe": buffer.skipped_to_keyframe if buffer else None,
        "framesDroppedAfterLoss": buffer.dropped_frames if buffer else None,
    }


def stats_totals(publisher: dict[str, Any], subscriber: dict[str, Any]) -> dict[str, Any]:
    """Bytes and packets over both PCs; the largest RTT the server's reports give."""
    totals: dict[str, Any] = {
        "bytesSent": 0,
        "bytesReceived": 0,
        "packetsSent": 0,
        "packetsReceived": 0,
        "packetsLost": 0,
        "rtt": None,
    }
    for side in (publisher, subscriber):
        tr = side.get("transport") or {}
        totals["bytesSent"] += tr.get("bytesSent", 0)
        totals["bytesReceived"] += tr.get("bytesReceived", 0)
    for t in publisher["tracks"].values():
        totals["packetsSent"] += t.get("packetsSent") or 0
        if t.get("rtt") is not None:
            totals["rtt"] = t["rtt"] if totals["rtt"] is None else max(totals["rtt"], t["rtt"])
    for t in subscriber["tracks"].values():
        totals["packetsReceived"] += t.get("packetsReceived") or 0
        totals["packetsLost"] += t.get("packetsLost") or 0
    return totals


async def peer_connection_stats(
    pc: RTCPeerConnection | None,
    published: list[dict[str, Any]],
    tracks: dict[TrackKey, MediaStreamTrack],
    sinks: dict[TrackKey, TrackSink],
    *,
    sending: bool,
) -> dict[str, Any]:
    """One PC's getStats: its transport, and per track what was sent or received.

    Sent tracks are keyed by their published sid (``published``: the publish reply's
    TrackInfo list) when known, else the local track id; received tracks by
    ``"participant_sid/track_sid"`` from ``tracks``, with their sink's counters.
    """
    result: dict[str, Any] = {
        "state": pc.connectionState if pc else None,
        "transport": {},
        "tracks": {},
    }
    if pc is None:
        return result
    sid_by_kind: dict[str, list[str]] = {}
    for info in published:
        sid_by_kind.setdefault(info.get("kind", ""), []).append(info.get("sid", ""))
    for tr in pc.getTransceivers():
        if sending:
            if tr.sender.track is None:
                continue
            report = await tr.sender.getStats()
            sids = sid_by_kind.get(tr.kind) or []
            key = sids.pop(0) if sids else tr.sender.track.id
        else:
            if tr.receiver.track is None:
                continue
            report = await tr.receiver.getStats()
            found = next((k for k, t in tracks.items() if t is tr.receiver.track), None)
            if found is None:
                continue
            key = f"{found[0]}/{found[1]}"
        entry: dict[str, Any] = {"kind": tr.kind, "mid": tr.mid}
        rate = 90000 if tr.kind == "video" else 48000  # aiortc's jitter is in clock units
        for s in report.values():
            if s.type == "transport":
                result["transport"] = {
                    "bytesSent": s.bytesSent,
                    "bytesReceived": s.bytesReceived,
                    "packetsSent": s.packetsSent,
                    "packetsReceived": s.packetsReceived,
                    "dtlsState": s.dtlsState,
                }
            elif s.type == "outbound-rtp":
                entry.update(ssrc=s.ssrc, packetsSent=s.packetsSent, bytesSent=s.bytesSent)
            elif s.type == "remote-inbound-rtp":
                entry.update(
                    rtt=s.roundTripTime,
                    packetsLost=s.packetsLost,
                    fractionLost=s.fractionLost,
                    jitter=s.jitter / rate,
                )
            elif s.type == "inbound-rtp":
                entry.update(
                    ssrc=s.ssrc,
                    packetsReceived=s.packetsReceived,
                    packetsLost=s.packetsLost,
                    jitter=s.jitter / rate,
                )
        if not sending:
            entry.update(_received(tr, sinks.get(found)))  # type: ignore[arg-type]
        result["tracks"][key] = entry
    return result
