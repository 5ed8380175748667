"""Router -> recorder without sockets: a PublishedTrack's layers feed a Recording's sinks."""

from __future__ import annotations

from pathlib import Path

from media.ortc import RtpCodec
from media.routing.published_track import PublishedTrack
from media.stats import EngineStats
from media.wire.red import build_red
from media.wire.rtp import build_rtp, parse_rtp
from recorder.recording import Recording

from .fakes import FakeKeyframeSink
from .recorder_media import decode_count, encode_opus, probe, simulcast

RED_PT, OPUS_PT = 63, 111


def new_recording(tmp_path: Path) -> Recording:
    rec = Recording(tmp_path / "rec", room="room", recording_id="rec", unix_offset_s=1.7e9, now_ms=0.0)
    rec.add_participant("PA_pub", "teacher", "Ms Rivera")
    return rec


def record(rec: Recording, track: PublishedTrack) -> None:
    """What the integration will do for each published track (through the Router)."""
    sink = rec.add_track(sid=track.sid, participant_sid=track.participant_sid, kind=track.kind,
                         source=track.source, codec=track.codec.name, clock_rate=track.codec.clock_rate,
                         layers=len(track.layers), red_pt=track.red_pt, host=track)
    track.add_sink(sink)


def test_simulcast_track_recorded_from_its_top_layer_with_plis_to_the_publisher(tmp_path: Path) -> None:
    plis = FakeKeyframeSink()
    track = PublishedTrack(participant_sid="PA_pub", mid="1", kind="video",
                           codec=RtpCodec(96, "VP8", 90000), rids=["q", "h", "f"],
                           stats=EngineStats(), keyframe_sink=plis, source="camera")
    for layer in track.layers:
        layer.bind_ssrc(100 + layer.index)
    rec = new_recording(tmp_path)
    record(rec, track)
    n = 120
    # f stops at frame 45 (the publisher's own congestion) and never comes back.
    stream = simulcast(n, active={0: range(n), 1: range(n), 2: range(45)})
    for now, p in stream:
        track.layers[p.layer].on_packet(parse_rtp(bytes(p.view.buf)), now, False)
    track.close()  # unpublished: the sink finalizes its file
    manifest = rec.stop(n * 1000 / 30)
    entry = manifest.tracks[0]
    assert entry.closed and entry.layer_switches == 1 and entry.file.startswith("teacher_")
    path = str(rec.directory / entry.file)
    frames, _, times, keys = probe(path)
    assert decode_count(path) == frames
    index = [round(t * 30) for t in times]
    assert index[:45] == list(range(45)) and keys[45]
    assert index[45:] == list(range(index[45], n))  # layer h from its keyframe on
    assert 101 in plis.plis  # the keyframe for the switch was asked on h's SSRC


def test_audio_red_packets_and_red_recovered_losses_are_recorded(tmp_path: Path) -> None:
    track = PublishedTrack(participant_sid="PA_pub", mid="0", kind="audio",
                           codec=RtpCodec(OPUS_PT, "opus", 48000, channels=2), rids=None,
                           stats=EngineStats(), keyframe_sink=FakeKeyframeSink(),
                           source="microphone", red_pt=RED_PT)
    track.layers[0].bind_ssrc(2001)
    rec = new_recording(tmp_path)
    record(rec, track)
    frames = encode_opus(100)
    for i, frame in enumerate(frames):
        if i in (30, 31, 60):
            continue  # lost upstream; the next packets' redundant blocks carry them
        redundant = [(960 * k, frames[i - k]) for k in (2, 1) if i - k >= 0]
        payload = build_red(OPUS_PT, frame, redundant)
        raw = build_rtp(payload_type=RED_PT, seq=(500 + i) & 0xFFFF, timestamp=i * 960,
                        ssrc=2001, payload=payload)
        track.layers[0].on_packet(parse_rtp(raw), i * 20.0, False)
    rec.stop(2000.0)
    path = str(rec.directory / rec.manifest.tracks[0].file)
    count, _, times, _ = probe(path)
    assert count == 100 and decode_count(path) == 100
    assert [round(t * 50) for t in times] == list(range(100))
