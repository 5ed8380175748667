"""Socket-free Router set-up shared by the routing tests: what the publish request and a
subscriber negotiation do, driven by a real Chromium simulcast offer (audio + 3 layers).
"""

from __future__ import annotations

from pathlib import Path

from media.engine import Engine, EngineConfig
from media.ortc import EXT_TWCC, Encoding, MediaDescription
from media.routing.down_track import DownTrack
from media.routing.published_track import PublishedTrack
from media.routing.router import MediaParticipant
from media.routing.subscriber import SubscriberPeer
from signaling import sdp

OFFER = (Path(__file__).parent / "fixtures" / "chromium156-simulcast-offer.sdp").read_text()


def publish(participant: MediaParticipant) -> list[PublishedTrack]:
    """What the publish request does: answer Chromium's offer and apply it."""
    offer = sdp.parse(OFFER, "offer")
    _, negotiated = sdp.answer_publisher(offer, transport=participant.local_parameters("publisher"))
    added, removed = participant.apply_publisher(offer.transport, negotiated.media, offer.media)
    assert len(added) == 2 and not removed
    return added


def subscribe(
    viewer: MediaParticipant, track: PublishedTrack, mid: int, *, twcc: bool = True, red: bool = True
) -> None:
    """The section a room would offer for ``track``, answered as offered; without
    transport-cc (``twcc=False``) the viewer's estimate comes from REMB; ``red=False``:
    audio without RED."""
    router = viewer.router
    extensions = sdp.default_subscriber_extensions(track.kind)
    section = MediaDescription(
        mid=str(mid),
        kind=track.kind,
        direction="sendonly",
        codecs=sdp.default_subscriber_codecs(track.kind, red=red and track.kind == "audio"),
        header_extensions=extensions if twcc else [e for e in extensions if e.uri != EXT_TWCC],
        encodings=[
            Encoding(
                ssrc=router.new_ssrc(),
                rtx_ssrc=router.new_ssrc() if track.kind == "video" else None,
            )
        ],
        msid=(track.participant_sid, track.sid),
    )
    assert viewer.subscribe(track, section, section) is not None


def audio_viewer(*, twcc: bool = True) -> tuple[Engine, SubscriberPeer, DownTrack]:
    """An engine (no socket bound until started) whose room has a Chromium publisher and
    one viewer subscribed to its audio: the engine, the viewer's subscriber, its DownTrack."""
    engine = Engine(EngineConfig(port=0))
    router = engine.router("room")
    viewer = router.add_participant("PA_viewer")
    audio = next(t for t in publish(router.add_participant("PA_pub")) if t.kind == "audio")
    subscribe(viewer, audio, 0, twcc=twcc)
    sub = viewer.subscriber
    return engine, sub, sub.down_tracks[audio.sid]
