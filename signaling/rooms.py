"""Rooms and participants on the signaling side, and subscriber renegotiation.

A Room pairs the signaling state (who is here, what they publish, who to tell) with
the media engine's per-room Router. Rooms are created on first join and closed once
they have been empty for `room_empty_timeout_s`. A participant whose socket drops
without `leave` is kept for `reconnect_grace_s`; joining again with the same
identity replaces it (no duplicate participant).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from media.engine import Engine
from media.ortc import Encoding, MediaDescription, RtpCodec
from media.routing.published_track import PublishedTrack
from media.routing.router import MediaParticipant, Router

from . import sdp
from .auth import Claims

log = logging.getLogger("ferry.signaling.rooms")

Send = Callable[[dict], None]


# A subscriber offer that gets no answer this long is sent again (LiveKit waits 15 s too).
SUBSCRIBER_ANSWER_TIMEOUT_S = 15.0
# First delay before re-offering after an answer Ferry could not apply; doubles per
# failure in a row, up to the answer timeout.
ANSWER_RETRY_S = 0.5
# M-lines one viewer's subscriber SDP may hold. Its answer must fit the 256 KiB an
# SDP-carrying request may have (signaling.protocol.MAX_SDP_MESSAGE_BYTES): a browser
# answers a video m-line in ~1.2 KB, so 150 leave room for JSON escaping and a few
# bigger ones. A track past the limit is not offered, the viewer gets
# `subscription_failed`, and the track is offered once an m-line of its kind is free.
MAX_SUBSCRIBED_TRACKS = 150


@dataclass
class SubscriberSection:
    """One m-line of a participant's subscriber PC.

    A section whose track is gone goes inactive. Once the client has answered an offer
    with it inactive (`free`), the next track of the same kind and codecs takes over its
    mid with new SSRCs and msid, as browsers and LiveKit reuse transceivers, so the SDP
    grows with the most tracks received at once rather than with every track ever
    received.
    """

    description: MediaDescription
    track_sid: str | None  # None once the track is gone (m-line inactive)
    free: bool = False  # inactive in an answered offer: may carry the next track of its kind
    released: bool = False  # its DownTrack was removed, so the router freed its SSRCs


@dataclass
class Participant:
    sid: str
    identity: str
    name: str
    claims: Claims
    room: Room
    media: MediaParticipant
    send: Send
    auto_subscribe: bool = True
    connected: bool = True
    disconnected_at: float | None = None
    desired: set[str] = field(default_factory=set)  # track sids to receive
    sections: list[SubscriberSection] = field(default_factory=list)
    offer_version: int = 0
    offer_pending: bool = False
    renegotiate_needed: bool = False
    # When the pending offer is sent again (set by the first tick that sees it pending,
    # or sooner after a failed answer); failures in a row set the retry backoff.
    offer_deadline: float | None = None
    answer_failures: int = 0
    session_id: int = field(default_factory=lambda: secrets.randbits(62))
    # Ends the signaling session bound to this participant (tells the client why and
    # closes its socket); set by the Session, called when another session replaces it.
    end_session: Callable[[str], None] | None = None
    # Events keep going to `send` while disconnected: a resumable participant's send is
    # its outbox, which logs them for the replay on resume (signaling.resume).
    logs_while_away: bool = False
    max_sections: int = MAX_SUBSCRIBED_TRACKS
    # Wanted tracks left out for `max_sections`; each was reported once.
    over_limit: set[str] = field(default_factory=set)
    # Moderation state (signaling.moderation): JSON metadata, a raised hand, and the
    # track sources it may publish (None: any source its grants allow).
    metadata: object = None
    hand_raised: bool = False
    allowed_sources: frozenset[str] | None = None

    @property
    def hidden(self) -> bool:
        return self.claims.grants.hidden

    def tracks(self) -> list[PublishedTrack]:
        return list(self.media.publisher.tracks_by_mid.values())

    def info(self) -> dict[str, object]:
        return {
            "sid": self.sid,
            "identity": self.identity,
            "name": self.name,
            "tracks": [t.info() for t in self.tracks()],
            "metadata": self.metadata,
            "hand_raised": self.hand_raised,
            "permissions": self.permissions(),
        }

    def permissions(self) -> dict[str, object]:
        """What it may do now (its token's grants, as a moderator may have changed them)."""
        grants = self.claims.grants
        return {
            "canPublish": grants.can_publish,
            "canSubscribe": grants.can_subscribe,
            "canPublishData": grants.can_publish_data,
            "canPublishSources": sorted(self.allowed_sources) if self.allowed_sources is not None else None,
            "roomAdmin": grants.room_admin,
        }

    def emit(self, message: dict) -> None:
        if self.connected or (self.logs_while_away and self.room.participants.get(self.sid) is self):
            try:
                self.send(message)
            except Exception:  # a dead socket must not break the room
                log.debug("send to %s failed", self.sid, exc_info=True)

    # -- subscriber negotiation -------------------------------------------------------
    def renegotiate(self) -> None:
        """Send a new subscriber offer if the set of received tracks changed."""
        if self.offer_pending:
            self.renegotiate_needed = True
            return
        self.renegotiate_needed = False
        if self._update_sections() and self.sections:
            self._send_offer()

    def restart_ice(self) -> None:
        """Subscriber ICE restart (the client's media path changed): new credentials,
        offered at once; a pending offer is superseded (its answer gets ``conflict``)."""
        self.media.restart_ice("subscriber")
        self.offer_pending = self.renegotiate_needed = False
        self._update_sections()
        if self.sections:
            self._send_offer()

    def _update_sections(self) -> bool:
        """Match sections to `desired`: gone tracks go inactive, new ones take a free
        section of their kind or a new one. Returns whether anything changed."""
        router = self.room.router
        changed = False
        self.over_limit &= self.desired
        for section in self.sections:
            sid = section.track_sid
            if sid is not None and (sid not in self.desired or sid not in router.tracks):
                section.released = self.media.unsubscribe(sid)
                section.track_sid = None
                section.description.direction = "inactive"
                changed = True
        present = {s.track_sid for s in self.sections if s.track_sid}
        for sid in sorted(self.desired):
            track = router.tracks.get(sid)
            if track is None or sid in present:
                continue
            codecs = self._codecs_for(track)
            reuse = next((s for s in self.sections if s.free and _same_media(s.description, track.kind, codecs)), None)
            if reuse is None and len(self.sections) >= self.max_sections:
                if sid not in self.over_limit:
                    self.over_limit.add(sid)
                    self.emit(
                        {
                            "type": "subscription_failed",
                            "track_sid": sid,
                            "reason": "max_subscribed_tracks",
                            "limit": self.max_sections,
                        }
                    )
                continue
            self.over_limit.discard(sid)
            if reuse is None:
                self.sections.append(SubscriberSection(self._new_section(track, str(len(self.sections)), codecs), sid))
            else:
                # The same SSRCs again: aiortc routes an m-line by the SSRCs it had when it
                # first received, and the new DownTrack continues that stream's numbering.
                old = reuse.description.encodings[0]
                keep = not reuse.released or router.claim_ssrcs(old.ssrc, old.rtx_ssrc)
                reuse.description = self._new_section(track, reuse.description.mid, codecs, old if keep else None)
                reuse.track_sid, reuse.free, reuse.released = sid, False, False
            changed = True
        return changed

    def _send_offer(self) -> None:
        self.offer_version += 1
        self.offer_pending = True
        self.offer_deadline = None
        text = sdp.offer_subscriber(
            [s.description for s in self.sections],
            transport=self.media.local_parameters("subscriber"),
            session_id=self.session_id,
            version=self.offer_version,
        )
        self.emit({"type": "subscriber_offer", "sdp": text, "version": self.offer_version})

    def on_timer(self, now: float, answer_timeout_s: float = SUBSCRIBER_ANSWER_TIMEOUT_S) -> None:
        """Re-offer (with any change queued meanwhile) when the pending offer got no
        usable answer in time: a lost or failed answer must not stop this participant
        from receiving anything ever again."""
        if not self.offer_pending or not self.connected:
            self.offer_deadline = None
            return
        if self.offer_deadline is None:
            self.offer_deadline = now + answer_timeout_s
        elif now >= self.offer_deadline:
            log.info("%s: no usable answer to subscriber offer v%d; offering again", self.sid, self.offer_version)
            self.offer_pending = self.renegotiate_needed = False
            self._update_sections()
            self._send_offer()

    def _codecs_for(self, track: PublishedTrack) -> list[RtpCodec]:
        # RED is offered when the publisher sends it, or when Ferry may add it itself.
        red = track.red_pt is not None or self.room.router.engine.config.add_red
        codecs = sdp.default_subscriber_codecs(track.kind, red=red)
        if track.kind == "video":
            codecs = [c for c in codecs if c.name.upper() == track.codec.name.upper()] or codecs
        return codecs

    def _new_section(
        self, track: PublishedTrack, mid: str, codecs: list[RtpCodec], encoding: Encoding | None = None
    ) -> MediaDescription:
        router = self.room.router
        kind = track.kind
        if encoding is None:
            encoding = Encoding(ssrc=router.new_ssrc(), rtx_ssrc=router.new_ssrc() if kind == "video" else None)
        return MediaDescription(
            mid=mid,
            kind=kind,
            direction="sendonly",
            codecs=codecs,
            header_extensions=sdp.default_subscriber_extensions(kind),
            encodings=[encoding],
            msid=(track.participant_sid, track.sid),
            cname=self.media.cname,
        )

    def apply_subscriber_answer(
        self, text: str, version: int, now: float, answer_timeout_s: float = SUBSCRIBER_ANSWER_TIMEOUT_S
    ) -> None:
        """Raises ValueError (sdp.SdpError) or LookupError for a stale version.

        An answer to the pending offer that cannot be applied ends that offer: a new one
        follows after a backoff (`answer_failed`), instead of waiting for an answer that
        will not come.
        """
        if not self.offer_pending or version != self.offer_version:
            raise LookupError(f"no pending subscriber offer with version {version}")
        try:
            answer = sdp.parse(text, "answer")
            offered = [s.description for s in self.sections]
            accepted = sdp.negotiated_subscriber(offered, answer)
            self.media.set_subscriber_remote(answer.transport)
        except Exception:
            self.answer_failed(now, answer_timeout_s)
            raise
        by_mid = {m.mid: m for m in accepted}
        router = self.room.router
        freed = False
        for section in self.sections:
            sid = section.track_sid
            if sid is None:
                freed = freed or not section.free
                section.free = True  # the client saw it inactive
                continue
            track = router.tracks.get(sid)
            got = by_mid.get(section.description.mid)
            if track is None or got is None:
                continue
            self.media.subscribe(track, section.description, got)
        self.offer_pending = False
        self.offer_deadline = None
        self.answer_failures = 0
        if self.renegotiate_needed or (freed and self.over_limit):
            self.renegotiate()  # queued changes, or a track that waited for a free m-line

    def answer_failed(self, now: float, answer_timeout_s: float = SUBSCRIBER_ANSWER_TIMEOUT_S) -> None:
        """The answer to the pending offer was refused (unparsable, too large): offer
        again after ANSWER_RETRY_S, doubling per failure in a row up to the timeout."""
        if not self.offer_pending:
            return
        delay = min(answer_timeout_s, ANSWER_RETRY_S * 2**self.answer_failures)
        self.answer_failures += 1
        self.offer_deadline = now + delay


def _same_media(section: MediaDescription, kind: str, codecs: list[RtpCodec]) -> bool:
    """Same kind and codec table: aiortc fixes a receiver's payload types when the
    m-line first receives, so a recycled m-line must keep them."""

    def table(cs: list[RtpCodec]) -> list[tuple[str, int, int | None]]:
        return [(c.name.lower(), c.payload_type, c.rtx_payload_type) for c in cs]

    return section.kind == kind and table(section.codecs) == table(codecs)


class RoomObserver(Protocol):
    """Told of rooms, members and tracks as they change (the recorder), on the event loop.

    Called after the room's own state changed; an observer that raises is logged and
    never breaks the room.
    """

    def room_created(self, room: Room) -> None: ...

    def room_closed(self, room: Room) -> None: ...

    def participant_joined(self, room: Room, participant: Participant) -> None: ...

    def participant_left(self, room: Room, participant: Participant) -> None: ...

    def tracks_published(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None: ...

    def tracks_unpublished(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None: ...

    def track_muted(self, room: Room, participant: Participant, track: PublishedTrack) -> None: ...


class RoomObserverBase:
    """A RoomObserver that ignores everything: subclasses override what they watch."""

    def room_created(self, room: Room) -> None:
        return None

    def room_closed(self, room: Room) -> None:
        return None

    def participant_joined(self, room: Room, participant: Participant) -> None:
        return None

    def participant_left(self, room: Room, participant: Participant) -> None:
        return None

    def tracks_published(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        return None

    def tracks_unpublished(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        return None

    def track_muted(self, room: Room, participant: Participant, track: PublishedTrack) -> None:
        return None


def _notify(observers: list[RoomObserver], method: str, *args: object) -> None:
    for observer in list(observers):
        try:
            getattr(observer, method)(*args)
        except Exception:
            log.exception("room observer %r failed in %s", observer, method)


class Room:
    def __init__(
        self,
        name: str,
        engine: Engine,
        on_close: Callable[[Room], None],
        observers: list[RoomObserver] | None = None,
    ) -> None:
        self.name = name
        self.observers = observers if observers is not None else []
        self.sid = "RM_" + secrets.token_hex(6)
        self.participants: dict[str, Participant] = {}
        self.router: Router = engine.router(name, self)
        self.empty_since: float | None = None
        self._on_close = on_close
        self.closed = False
        self.locked = False  # no new joins but roomAdmin (signaling.moderation)
        self.metadata: object = None

    def visible(self) -> list[Participant]:
        return [p for p in self.participants.values() if not p.hidden]

    def broadcast(self, message: dict, exclude: str | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant.sid != exclude:
                participant.emit(message)

    def by_identity(self, identity: str) -> Participant | None:
        for participant in self.participants.values():
            if participant.identity == identity:
                return participant
        return None

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sid": self.sid,
            "participants": [p.info() for p in self.visible()],
            "locked": self.locked,
            "metadata": self.metadata,
        }

    # -- RouterListener ----------------------------------------------------------------
    def on_active_speakers(self, speakers: list[dict[str, object]]) -> None:
        self.broadcast({"type": "active_speakers", "speakers": speakers})

    def on_peer_failed(self, participant_sid: str, role: str, reason: str) -> None:
        """A transport lost ICE consent (or never connected).

        A participant whose signaling socket is gone too is dropped at once. One that is
        still connected keeps its place (it may re-publish or reconnect), but a dead
        publisher transport takes its tracks with it so nobody waits on frozen media.
        """
        participant = self.participants.get(participant_sid)
        if participant is None:
            return
        if not participant.connected:
            log.info("dropping %s: %s transport failed (%s)", participant_sid, role, reason)
            self.remove(participant, reason="peer_gone")
            return
        log.info("%s transport of %s failed (%s)", role, participant_sid, reason)
        participant.emit({"type": "transport_failed", "target": role, "reason": reason})
        if role == "publisher":
            tracks = participant.tracks()
            for track in tracks:
                participant.media.unpublish(track.sid)
            if tracks:
                self.tracks_unpublished(participant, tracks)
            participant.media.replace_transport("publisher")
        else:
            participant.media.replace_transport("subscriber")
            participant.sections.clear()
            participant.offer_pending = False
            participant.renegotiate()

    def on_track_paused(self, participant_sid: str, track_sid: str, paused: bool) -> None:
        participant = self.participants.get(participant_sid)
        if participant is not None:
            participant.emit(
                {
                    "type": "track_paused" if paused else "track_resumed",
                    "track_sid": track_sid,
                    "reason": "bandwidth",
                }
            )

    def on_publisher_layers(self, participant_sid: str, track_sid: str, layers: dict[str, bool]) -> None:
        participant = self.participants.get(participant_sid)
        if participant is not None:
            participant.emit({"type": "publisher_layers", "track_sid": track_sid, "layers": layers})

    # -- membership --------------------------------------------------------------------
    def add(self, participant: Participant) -> None:
        self.participants[participant.sid] = participant
        self.empty_since = None
        if not participant.hidden:
            self.broadcast(
                {"type": "participant_joined", "participant": participant.info()},
                exclude=participant.sid,
            )
        _notify(self.observers, "participant_joined", self, participant)

    def remove(self, participant: Participant, *, reason: str = "left", now: float | None = None) -> None:
        if self.participants.pop(participant.sid, None) is None:
            return
        gone_tracks = [t.sid for t in participant.tracks()]
        self.router.remove_participant(participant.sid)
        for other in self.participants.values():
            other.desired.difference_update(gone_tracks)
            if gone_tracks:
                other.renegotiate()
        if not participant.hidden:
            self.broadcast({"type": "participant_left", "sid": participant.sid, "reason": reason})
        participant.connected = False
        if not self.participants:
            self.empty_since = now
        _notify(self.observers, "participant_left", self, participant)

    def tracks_published(self, publisher: Participant, tracks: list[PublishedTrack]) -> None:
        for track in tracks:
            if not publisher.hidden:
                self.broadcast({"type": "track_published", "track": track.info()}, exclude=publisher.sid)
        for other in self.participants.values():
            if other.sid == publisher.sid or not other.auto_subscribe:
                continue
            if not other.claims.grants.can_subscribe:
                continue
            other.desired.update(t.sid for t in tracks)
            other.renegotiate()
        _notify(self.observers, "tracks_published", self, publisher, tracks)

    def tracks_unpublished(self, publisher: Participant, tracks: list[PublishedTrack]) -> None:
        for track in tracks:
            self.broadcast(
                {"type": "track_unpublished", "track_sid": track.sid, "participant_sid": publisher.sid},
                exclude=publisher.sid,
            )
        sids = {t.sid for t in tracks}
        for other in self.participants.values():
            if other.desired & sids:
                other.desired -= sids
                other.renegotiate()
        _notify(self.observers, "tracks_unpublished", self, publisher, tracks)

    def track_muted(self, publisher: Participant, track: PublishedTrack, by: str | None = None) -> None:
        """`track.muted` changed: tell everyone else and the observers; a moderator's
        mute (``by`` their identity) is told to the publisher too."""
        message: dict[str, object] = {
            "type": "track_muted", "track_sid": track.sid, "participant_sid": publisher.sid, "muted": track.muted,
        }
        if by is not None:
            message["by"] = by
        self.broadcast(message, exclude=None if by is not None else publisher.sid)
        _notify(self.observers, "track_muted", self, publisher, track)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for participant in list(self.participants.values()):
            participant.connected = False
        self.participants.clear()
        _notify(self.observers, "room_closed", self)
        self._on_close(self)


class RoomManager:
    """All rooms of this server; the ticker closes idle rooms and expired reconnects."""

    def __init__(
        self,
        engine: Engine,
        *,
        empty_timeout_s: float,
        reconnect_grace_s: float,
        max_tracks_per_participant: int = 16,
        subscriber_answer_timeout_s: float = SUBSCRIBER_ANSWER_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.empty_timeout_s = empty_timeout_s
        self.reconnect_grace_s = reconnect_grace_s
        self.max_tracks_per_participant = max_tracks_per_participant
        self.subscriber_answer_timeout_s = subscriber_answer_timeout_s
        self.rooms: dict[str, Room] = {}
        self.observers: list[RoomObserver] = []  # shared with every room

    def get_or_create(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = Room(name, self.engine, self._closed, self.observers)
            self.rooms[name] = room
            log.info("room %s created", name)
            _notify(self.observers, "room_created", room)
        return room

    def _closed(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        self.engine.close_router(room.name)
        log.info("room %s closed", room.name)

    def on_timer(self, now: float) -> None:
        for room in list(self.rooms.values()):
            for participant in list(room.participants.values()):
                if (
                    not participant.connected
                    and participant.disconnected_at is not None
                    and now - participant.disconnected_at > self.reconnect_grace_s
                ):
                    room.remove(participant, reason="disconnected", now=now)
            for participant in list(room.participants.values()):
                participant.on_timer(now, self.subscriber_answer_timeout_s)
            if not room.participants:
                if room.empty_since is None:
                    room.empty_since = now
                elif now - room.empty_since >= self.empty_timeout_s:
                    room.close()

    def participant_count(self) -> int:
        return sum(len(r.participants) for r in self.rooms.values())

    def close(self) -> None:
        for room in list(self.rooms.values()):
            room.close()
