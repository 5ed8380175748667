"""Per-room media state: participants' peers, published tracks, subscriptions.

All engine state lives per room (DESIGN section 12), so that rooms can later be
pinned to worker processes. Signaling talks to a Router through `MediaParticipant`
with ortc dataclasses only; it never hands SDP text to the engine.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from media.ortc import (
    EXT_AUDIO_LEVEL,
    EXT_TWCC,
    MediaDescription,
    TransportParameters,
)
from media.stats import EngineStats
from media.transport.webrtc_transport import WebRtcTransport

from .down_track import DownTrack
from .published_track import PublishedTrack
from .publisher import PublisherPeer
from .sink import PacketSink
from .subscriber import SubscriberPeer

log = logging.getLogger("ferry.media.router")

SPEAKER_INTERVAL_MS = 500.0
SPEAKER_THRESHOLD = 0.15
DYNACAST_INTERVAL_MS = 500.0
DYNACAST_OFF_AFTER_MS = 1000.0  # a layer must be unneeded this long before pausing it
TOP_SPEAKERS = 3
#: Slices of participants whose timers run on separate engine ticks (Router.on_timer).
TIMER_PHASES = 4


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """A subscriber's settings for one track, as in effect."""

    max_layer: str | None  # rid of the highest layer it may get (None: not simulcast)
    enabled: bool


class HostConfig(Protocol):
    @property
    def add_red(self) -> bool: ...  # wrap Opus in RED toward lossy RED-capable subscribers


class RouterHost(Protocol):
    """What a Router needs of the engine that hosts it (`media.engine.Engine` is one):
    its clock and timers, transports on the shared socket, and the shared counters."""

    @property
    def stats(self) -> EngineStats: ...

    @property
    def config(self) -> HostConfig: ...

    def now_ms(self) -> float: ...

    def call_at(self, when_ms: float, callback: Callable[[], None]) -> object: ...

    def ntp_at(self, now_ms: float) -> int: ...

    def create_transport(self, *, name: str = "") -> WebRtcTransport: ...

    def local_parameters(self, transport: WebRtcTransport, *, setup: str) -> TransportParameters: ...


class RouterListener(Protocol):
    def on_active_speakers(self, speakers: list[dict[str, object]]) -> None: ...

    def on_peer_failed(self, participant_sid: str, role: str, reason: str) -> None: ...

    def on_track_paused(self, participant_sid: str, track_sid: str, paused: bool) -> None: ...

    def on_publisher_layers(self, participant_sid: str, track_sid: str, layers: dict[str, bool]) -> None: ...


class MediaParticipant:
    """The media half of a participant: a publisher and a subscriber transport."""

    def __init__(self, router: Router, sid: str) -> None:
        self.router = router
        self.sid = sid
        engine = router.engine
        self.cname = secrets.token_hex(8)
        # Which of the engine's timer phases runs this participant's timers (see
        # Router.on_timer): set by the router on add.
        self.timer_phase = 0
        pub_transport = engine.create_transport(name=f"{sid}/pub")
        sub_transport = engine.create_transport(name=f"{sid}/sub")
        self.publisher = PublisherPeer(
            sid,
            pub_transport,
            engine.stats,
            rtcp_ssrc=router.new_ssrc(),
            ntp_at=engine.ntp_at,
            on_failed=lambda reason: router.peer_failed(sid, "publisher", reason),
        )
        self.subscriber = SubscriberPeer(
            sid,
            sub_transport,
            engine.stats,
            rtcp_ssrc=router.new_ssrc(),
            cname=self.cname,
            ntp_at=engine.ntp_at,
            on_failed=lambda reason: router.peer_failed(sid, "subscriber", reason),
            schedule=engine.call_at,
        )
        self.subscriber.on_down_track_removed = lambda down: router.release_ssrcs(down.ssrc, down.rtx_ssrc)
        # The allocator pausing (or resuming) a track for bandwidth reaches signaling as
        # track_paused / track_resumed for this subscriber.
        self.subscriber.on_track_paused = lambda track_sid, paused: router.track_paused(
            sid, track_sid, paused
        )
        self.closed = False

    def replace_transport(self, role: str) -> None:
        """Give a failed peer connection a fresh transport (new ICE credentials)."""
        engine = self.router.engine
        transport = engine.create_transport(name=f"{self.sid}/{role[:3]}")
        if role == "publisher":
            old = self.publisher.transport
            self.publisher.transport = transport
            transport.listener = self.publisher
        else:
            for sid in list(self.subscriber.down_tracks):
                self.subscriber.remove_down_track(sid)
            self.subscriber.ended_streams.clear()  # the new transport's m-lines start afresh
            old = self.subscriber.transport
            self.subscriber.transport = transport
            transport.listener = self.subscriber
        old.close()

    def restart_ice(self, role: str) -> None:
        """ICE restart of one peer connection: new local credentials, sent in the next
        answer (publisher) or offer (subscriber); the peer's new ufrag is learned from its
        next description. The current path keeps its consent until checks use the new
        credentials, so media flows on through the restart."""
        transport = self.publisher.transport if role == "publisher" else self.subscriber.transport
        transport.restart_ice()

    def ice_restart_offered(self, remote_ufrag: str | None) -> bool:
        """Whether a publisher offer with ``remote_ufrag`` restarts ICE (RFC 8839: new
        ufrag in an offer); if so, the publisher transport is restarted to answer it."""
        known = self.publisher.transport.ice.remote_ufrag
        if known is None or not remote_ufrag or remote_ufrag == known:
            return False
        self.restart_ice("publisher")
        return True

    def local_parameters(self, role: str) -> TransportParameters:
        transport = self.publisher.transport if role == "publisher" else self.subscriber.transport
        return self.router.engine.local_parameters(transport, setup="passive" if role == "publisher" else "actpass")

    # -- publishing ------------------------------------------------------------------
    def apply_publisher(
        self,
        remote: TransportParameters,
        negotiated: list[MediaDescription],
        offered: list[MediaDescription],
        meta: dict[str, dict[str, str]] | None = None,
    ) -> tuple[list[PublishedTrack], list[PublishedTrack]]:
        """Apply a (re-)negotiated publisher description: returns (added, removed) tracks.

        `negotiated` is Ferry's answer (what Ferry receives), `offered` the client's
        offer (where its SSRCs, msids and rids are).
        """
        pub = self.publisher
        pub.transport.set_remote(remote.fingerprints, remote.ice_ufrag)
        ids: dict[str, int] = {}
        for section in negotiated:
            if not section.rejected:
                for ext in section.header_extensions:
                    ids.setdefault(ext.uri, ext.id)
        pub.set_extensions(ids)
        offered_by_mid = {m.mid: m for m in offered}
        added: list[PublishedTrack] = []
        removed: list[PublishedTrack] = []
        live_mids = set()
        for section in negotiated:
            receiving = not section.rejected and section.direction in ("recvonly", "sendrecv")
            if not receiving or section.kind not in ("audio", "video"):
                continue
            live_mids.add(section.mid)
            if section.mid in pub.tracks_by_mid:
                continue
            track = self._make_track(section, offered_by_mid.get(section.mid, section), meta or {})
            if track is None:
                continue
            offer = offered_by_mid.get(section.mid, section)
            ssrcs = [(e.ssrc, e.rtx_ssrc) for e in offer.encodings] if not track.simulcast else []
            pub.add_track(track, ssrcs)
            self.router.add_track(track)
            added.append(track)
        for mid in list(pub.tracks_by_mid):
            if mid not in live_mids:
                track = pub.tracks_by_mid[mid]
                self.router.remove_track(track)
                pub.remove_track(mid)
                removed.append(track)
        return added, removed

    def _make_track(
        self, section: MediaDescription, offer: MediaDescription, meta: dict[str, dict[str, str]]
    ) -> PublishedTrack | None:
        codecs = [c for c in section.codecs if c.name.lower() not in ("red", "rtx", "ulpfec")]
        if not codecs:
            return None
        red = next((c for c in section.codecs if c.name.lower() == "red"), None)
        rids = [e.rid for e in offer.encodings if e.rid] if section.simulcast or offer.simulcast else None
        track_id = offer.msid[1] if offer.msid else None
        info = meta.get(track_id or "", {}) if track_id else {}
        source = info.get("source") or ("microphone" if section.kind == "audio" else "camera")
        return PublishedTrack(
            participant_sid=self.sid,
            mid=section.mid,
            kind=section.kind,
            codec=codecs[0],
            rids=rids or None,
            stats=self.router.engine.stats,
            keyframe_sink=self.publisher,
            source=source,
            name=info.get("name", ""),
            msid_track=track_id,
            red_pt=red.payload_type if red is not None and section.kind == "audio" else None,
        )

    def unpublish(self, track_sid: str) -> PublishedTrack | None:
        for mid, track in list(self.publisher.tracks_by_mid.items()):
            if track.sid == track_sid:
                self.router.remove_track(track)
                self.publisher.remove_track(mid)
                return track
        return None

    # -- subscribing -----------------------------------------------------------------
    def set_subscriber_remote(self, remote: TransportParameters) -> None:
        self.subscriber.transport.set_remote(remote.fingerprints, remote.ice_ufrag)

    def subscribe(
        self, track: PublishedTrack, offered: MediaDescription, accepted: MediaDescription
    ) -> DownTrack | None:
        """Start forwarding `track` with what the subscriber accepted for its m-line."""
        if track.closed or accepted.rejected:
            return None
        existing = self.subscriber.down_tracks.get(track.sid)
        if existing is not None:
            return existing
        name = track.codec.name.lower()
        primary = next((c for c in accepted.codecs if c.name.lower() == name), None)
        if primary is None:
            log.info("subscriber %s accepted no %s for track %s", self.sid, name, track.sid)
            return None
        red = next((c for c in accepted.codecs if c.name.lower() == "red"), None)
        encoding = offered.encodings[0] if offered.encodings else None
        if encoding is None or encoding.ssrc is None:
            return None
        rtx_pt = primary.rtx_payload_type
        ext_ids = {e.uri: e.id for e in accepted.header_extensions}
        down = DownTrack(
            track,
            self.subscriber,
            mid=accepted.mid,
            ssrc=encoding.ssrc,
            rtx_ssrc=encoding.rtx_ssrc if rtx_pt is not None else None,
            payload_type=primary.payload_type,
            rtx_payload_type=rtx_pt,
            red_payload_type=red.payload_type if red is not None else None,
            clock_rate=primary.clock_rate,
            twcc_ext_id=ext_ids.get(EXT_TWCC),
            audio_level_ext_id=ext_ids.get(EXT_AUDIO_LEVEL),
            rng=self.router.rng,
            add_red=self.router.engine.config.add_red,
            audio_nack=primary.has_feedback("nack"),
        )
        previous = self.subscriber.ended_streams.pop(accepted.mid, None)
        if previous is not None and previous.ssrc == down.ssrc:
            down.continue_from(previous)
        self.subscriber.add_down_track(down)
        self.router.on_subscribed(down)
        return down

    def unsubscribe(self, track_sid: str) -> bool:
        """Stop forwarding `track_sid`; True if it was forwarded (its SSRCs are released)."""
        return self.subscriber.remove_down_track(track_sid) is not None

    def on_timer(self, now_ms: float) -> None:
        self.publisher.transport.on_timer(now_ms)
        self.subscriber.transport.on_timer(now_ms)
        self.publisher.on_timer(now_ms)
        self.subscriber.on_timer(now_ms)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for track in list(self.publisher.tracks_by_mid.values()):
            self.router.remove_track(track)
        self.publisher.close()
        self.subscriber.close()
        self.router.release_ssrcs(self.publisher.rtcp_ssrc, self.subscriber.rtcp_ssrc)


class Router:
    """One room's media plane."""

    def __init__(self, engine: RouterHost, name: str, listener: RouterListener | None = None) -> None:
        self.engine = engine
        self.name = name
        self.listener = listener
        self.participants: dict[str, MediaParticipant] = {}
        self.tracks: dict[str, PublishedTrack] = {}
        self.rng = random.Random()
        self._ssrcs: set[int] = set()
        self._next_speakers_ms = 0.0
        self._speakers: list[str] = []
        self._next_dynacast_ms = 0.0
        self._layer_needed_ms: dict[tuple[str, int], float] = {}
        self.publisher_layers: dict[str, dict[str, bool]] = {}  # track sid -> rid -> enabled
        self.dynacast = True
        self.closed = False
        self._next_phase = 0

    def new_ssrc(self) -> int:
        while True:
            ssrc = self.rng.randrange(1, 1 << 32)
            if ssrc not in self._ssrcs:
                self._ssrcs.add(ssrc)
                return ssrc

    def claim_ssrcs(self, *ssrcs: int | None) -> bool:
        """Take released SSRCs back (a recycled m-line keeps its SSRCs, so receivers that
        learn SSRCs once per m-line still route it). False, claiming none, if one of them
        is in use again."""
        wanted = {s for s in ssrcs if s is not None}
        if wanted & self._ssrcs:
            return False
        self._ssrcs.update(wanted)
        return True

    def release_ssrcs(self, *ssrcs: int | None) -> None:
        """Free SSRCs nothing sends or announces any more (a closed peer's RTCP SSRC, a
        removed DownTrack's), so a long-lived room's set is the size of what is live."""
        self._ssrcs.difference_update(s for s in ssrcs if s is not None)

    def add_participant(self, sid: str) -> MediaParticipant:
        participant = MediaParticipant(self, sid)
        participant.timer_phase = self._next_phase
        self._next_phase = (self._next_phase + 1) % TIMER_PHASES
        self.participants[sid] = participant
        return participant

    def remove_participant(self, sid: str) -> None:
        participant = self.participants.pop(sid, None)
        if participant is not None:
            participant.close()

    def add_track(self, track: PublishedTrack) -> None:
        self.tracks[track.sid] = track

    def remove_track(self, track: PublishedTrack) -> None:
        self.tracks.pop(track.sid, None)
        self.publisher_layers.pop(track.sid, None)
        for layer in track.layers:
            self._layer_needed_ms.pop((track.sid, layer.index), None)
        for participant in self.participants.values():
            participant.subscriber.remove_down_track(track.sid)
        track.close()

    def add_sink(self, track_sid: str, sink: PacketSink) -> PublishedTrack:
        """Feed `sink` (recorder, captions) every packet of a track; returns the track, its
        SinkHost. KeyError when the track is not published (any more)."""
        track = self.tracks[track_sid]
        track.add_sink(sink)
        return track

    def remove_sink(self, track_sid: str, sink: PacketSink) -> bool:
        """Stop feeding `sink`; False when the track is gone (a closed track drops its sinks)."""
        track = self.tracks.get(track_sid)
        if track is None or sink not in track.sinks:
            return False
        track.remove_sink(sink)
        return True

    def on_subscribed(self, down: DownTrack) -> None:
        now = self.engine.now_ms()
        down.select_layer(now)
        down.request_keyframe(now)

    def update_subscription(
        self,
        participant_sid: str,
        track_sid: str,
        *,
        max_layer: str | None = None,
        size: tuple[int, int] | None = None,
        enabled: bool | None = None,
    ) -> SubscriptionSettings:
        """A subscriber's settings for one track it receives; None leaves a setting as is.

        `max_layer`: the rid of the highest layer it wants (an unknown rid: the top one).
        `size`: the (width, height) it renders the track at, which caps the layer at the
        smallest one covering it; a 0 removes that cap. `enabled`: False stops the track
        without unsubscribing (a hidden tile). Returns what is in effect. LookupError
        when `participant_sid` does not receive `track_sid`.
        """
        participant = self.participants.get(participant_sid)
        down = participant.subscriber.down_tracks.get(track_sid) if participant is not None else None
        if down is None:
            raise LookupError(f"not subscribed to {track_sid}")
        track, selector = down.track, down.selector
        if max_layer is not None:
            found = track.layer_by_rid(max_layer)
            selector.pin(found.index if found is not None else len(track.layers) - 1)
        if size is not None:
            selector.set_rendered_size(track.layers, *size)
        if enabled is not None:
            selector.set_enabled(enabled)
        return SubscriptionSettings(track.layers[selector.max_layer].rid, selector.enabled)

    def track_paused(self, sid: str, track_sid: str, paused: bool) -> None:
        if self.listener is not None:
            self.listener.on_track_paused(sid, track_sid, paused)

    def peer_failed(self, sid: str, role: str, reason: str) -> None:
        if self.listener is not None:
            self.listener.on_peer_failed(sid, role, reason)

    def on_timer(self, now_ms: float, phase: int | None = None) -> None:
        """Run timers: every participant's, or (``phase`` given) only those in that one
        of TIMER_PHASES slices. The engine runs one slice per call so that a big room's
        timer work (RTCP, feedback, allocation for each of N peers) is cut into pieces
        between which received packets are forwarded, instead of one pause per tick
        that every packet arriving in it waits out."""
        for participant in list(self.participants.values()):
            if phase is None or participant.timer_phase == phase:
                participant.on_timer(now_ms)
        if now_ms >= self._next_speakers_ms:
            self._next_speakers_ms = now_ms + SPEAKER_INTERVAL_MS
            self._update_speakers(now_ms)
        if self.dynacast and now_ms >= self._next_dynacast_ms:
            self._next_dynacast_ms = now_ms + DYNACAST_INTERVAL_MS
            self._update_dynacast(now_ms)

    def _update_dynacast(self, now_ms: float) -> None:
        """Pause simulcast layers nobody receives; resume them as soon as one is wanted.

        A layer is wanted when some subscriber's allocation within its cap (its layer
        selector's `wanted_layer`) or an internal sink (`wanted_layer`: a recording)
        reaches it. The lowest
        layer always stays on: it is cheap and it is what a new or struggling
        subscriber starts from.
        """
        for track in self.tracks.values():
            if not track.simulcast or track.kind != "video":
                continue
            wanted = track.sink_layer  # internal sinks (the recorder) keep their layers on
            for down in track.down_tracks:
                layer = down.selector.wanted_layer
                if layer is not None and layer > wanted:
                    wanted = layer
            state = {}
            for layer in track.layers:
                key = (track.sid, layer.index)
                if layer.index <= wanted:
                    self._layer_needed_ms[key] = now_ms
                    state[layer.rid or str(layer.index)] = True
                else:
                    last = self._layer_needed_ms.setdefault(key, now_ms)
                    state[layer.rid or str(layer.index)] = now_ms - last < DYNACAST_OFF_AFTER_MS
            if state != self.publisher_layers.get(track.sid):
                self.publisher_layers[track.sid] = state
                for layer in track.layers:
                    layer.set_active(state[layer.rid or str(layer.index)], now_ms)
                if self.listener is not None:
                    self.listener.on_publisher_layers(track.participant_sid, track.sid, dict(state))

    def _update_speakers(self, now_ms: float) -> None:
        levels: dict[str, float] = {}
        for track in self.tracks.values():
            if track.kind != "audio" or track.muted:
                continue
            level = track.audio_level.level
            if level >= SPEAKER_THRESHOLD:
                levels[track.participant_sid] = max(level, levels.get(track.participant_sid, 0.0))
        ordered = sorted(levels, key=lambda sid: -levels[sid])
        top = set(ordered[:TOP_SPEAKERS])
        for participant in self.participants.values():
            participant.subscriber.speakers = top
        if ordered != self._speakers:
            self._speakers = ordered
            if self.listener is not None:
                self.listener.on_active_speakers(
                    [{"sid": sid, "level": round(levels[sid], 3)} for sid in ordered]
                )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sid in list(self.participants):
            self.remove_participant(sid)

