"""One signaling connection: turns requests into room/engine operations.

Transport-agnostic: the WebSocket and QUIC shells feed it raw frames through
`receive(frame, now)` and give it a `send(dict)` callable. Every failure becomes a
coded error reply (docs/protocol.md); nothing a client sends can raise out of here.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import sdp
from .auth import ADMIN_ALL_ROOMS, AuthError, TokenVerifier, check_join
from .captions import CaptionError, CaptionService, check_captions_admin
from .moderation import MODERATION_REQUESTS, ModerationError, ModerationService, sdp_sources
from .protocol import PROTOCOL_VERSION, ProtocolError, Request, decode, error_reply, ok
from .recording import RecordingError, RecordingService, check_record
from .resume import ResumeError
from .resume_service import ResumeService
from .rooms import Participant, Room, RoomManager

if TYPE_CHECKING:
    from .messages_service import MessageService

log = logging.getLogger("ferry.signaling.session")


class Session:
    def __init__(
        self,
        rooms: RoomManager,
        verifier: TokenVerifier,
        send: Callable[[dict], None],
        *,
        max_participants: int = 200,
        on_error: Callable[[str], None] | None = None,
        close: Callable[[], None] | None = None,
        recordings: RecordingService | None = None,
        captions: CaptionService | None = None,
        resume: ResumeService | None = None,
        messages: MessageService | None = None,
        moderation: ModerationService | None = None,
    ) -> None:
        self.rooms = rooms
        self.moderation = moderation
        # Who is on the other end, for the audit log (set by the shell): remote, user_agent.
        self.peer: dict[str, str | None] = {}
        self.recordings = recordings
        self.captions = captions
        self.resume = resume
        self.messages = messages
        # Sends an unreliable room message as a QUIC datagram; returns False when the
        # connection has none (set by the QUIC shell).
        self.send_datagram: Callable[[dict[str, Any]], bool] | None = None
        self.verifier = verifier
        self.send = send
        self.max_participants = max_participants
        self.on_error = on_error
        self._close = close
        self.hello_done = False
        self.participant: Participant | None = None
        self.room: Room | None = None
        # True once a join succeeded (the shell closes sockets that never join).
        self.joined = False
        # Set when the server ended the session (replaced, shutdown): frames still in
        # flight from this socket are dropped, so it can never act for a removed participant.
        self.ended_reason: str | None = None

    # -- entry point -------------------------------------------------------------------
    def receive(self, frame: str | bytes, now: float) -> None:
        if self.ended_reason is not None:
            return
        try:
            request = decode(frame)
        except ProtocolError as exc:
            self._error(getattr(exc, "type", None) or "error", getattr(exc, "id", None), exc.code, exc.message)
            return
        try:
            self.handle(request, now)
        except ProtocolError as exc:
            self._error(request.type, request.id, exc.code, exc.message)
        except Exception:
            log.exception("internal error handling %s", request.type)
            self._error(request.type, request.id, "internal", "internal server error")

    def receive_datagram(self, body: bytes, now: float) -> None:
        """A QUIC datagram: only an unreliable ``send_data``, never answered (a lost
        datagram has no reply either); anything else is counted and dropped."""
        if self.ended_reason is not None:
            return
        try:
            req = decode(body)
            participant = self.participant
            if req.type != "send_data" or req.data["reliable"] or participant is None or self.messages is None:
                raise ProtocolError("bad_request", "a datagram carries only an unreliable send_data of a joined session")
            self.messages.send(self, participant, req, now, reply=False)
        except ProtocolError as exc:
            if self.on_error is not None:
                self.on_error(exc.code)
            log.debug("datagram dropped: %s", exc.message)

    def _error(self, type_: str, id_: object, code: str, message: str) -> None:
        if self.on_error is not None:
            self.on_error(code)
        if id_ is None:
            self.send({"type": "error", "error": {"code": code, "message": message}})
        else:
            self.send(error_reply(type_, id_, code, message))

    def handle(self, req: Request, now: float) -> None:
        if req.type == "hello":  # decode() already refused other protocol versions
            self.hello_done = True
            self.send(ok(req, server="ferry", version=PROTOCOL_VERSION))
            return
        if req.type == "ping":
            self.send(ok(req))
            return
        if not self.hello_done:
            raise ProtocolError("bad_request", "send hello first")
        if req.type == "join":
            self._join(req, now)
            return
        if req.type == "resume":
            self._resume(req, now)
            return
        participant = self.participant
        if participant is None or self.room is None:
            raise ProtocolError("not_joined", f"join a room before {req.type}")
        if self.room.participants.get(participant.sid) is not participant:
            # Removed by the room (grace expiry, dead peer): nothing may act in its name.
            self.participant = self.room = None
            raise ProtocolError("not_joined", f"no longer in a room; join again before {req.type}")
        if req.type in MODERATION_REQUESTS and self.moderation is not None:
            try:
                fields = self.moderation.handle(participant, req.type, req.data, now)
            except ModerationError as exc:
                raise ProtocolError(exc.code, exc.message) from None
            if self.ended_reason is None:
                self.send(ok(req, **fields))
            return
        handler = getattr(self, "_on_" + req.type, None)
        if handler is None:
            raise ProtocolError("unknown_type", f"unknown message type {req.type!r}")
        handler(req, participant, now)

    # -- requests ----------------------------------------------------------------------
    def _join(self, req: Request, now: float) -> None:
        if self.participant is not None:
            raise ProtocolError("conflict", "already joined")
        try:
            claims = self.verifier.verify(req.data["token"], now=now)
        except AuthError as exc:
            self._refused(exc.code, exc.message)
            raise ProtocolError(exc.code, exc.message) from None
        room_name = claims.grants.room
        if not room_name:
            self._refused("forbidden", "token grants no room", claims.identity)
            raise ProtocolError("forbidden", "token grants no room")
        try:
            check_join(claims, room_name)
        except AuthError as exc:
            self._refused(exc.code, exc.message, claims.identity, room_name)
            raise ProtocolError(exc.code, exc.message) from None
        if room_name == ADMIN_ALL_ROOMS:
            raise ProtocolError("forbidden", "a token for room '*' is a server-wide admin token; it joins no room")
        existing = self.rooms.rooms.get(room_name)
        if existing is not None and self.moderation is not None:
            try:
                self.moderation.check_join(existing, claims)
            except ModerationError as exc:
                self._refused(exc.code, exc.message, claims.identity, room_name)
                raise ProtocolError(exc.code, exc.message) from None
        room = self.rooms.get_or_create(room_name)
        previous = room.by_identity(claims.identity)
        if previous is not None:
            room.remove(previous, reason="replaced", now=now)
            if previous.end_session is not None:
                previous.end_session("replaced")
        if len(room.participants) >= self.max_participants:
            raise ProtocolError(
                "room_full",
                f"room {room_name} is full: {len(room.participants)} participants, limit"
                f" {self.max_participants} (max_participants_per_room)",
            )
        sid = "PA_" + secrets.token_hex(6)
        media = room.router.add_participant(sid)
        participant = Participant(
            sid=sid,
            identity=claims.identity,
            name=claims.name or claims.identity,
            claims=claims,
            room=room,
            media=media,
            send=self.send,
            auto_subscribe=bool(req.data.get("auto_subscribe", True)),
            end_session=self.end,
        )
        others = room.visible()
        room.add(participant)
        self.participant = participant
        self.room = room
        self.joined = True
        audit = self.moderation.audit if self.moderation is not None else None
        if audit is not None:
            audit.write(
                "join", room=room.name, identity=participant.identity, sid=sid, remote=self.peer.get("remote"),
                user_agent=self.peer.get("user_agent"), grants=claims.grants.to_claim(),
            )
        resumable = self.resume.joined(self, participant) if self.resume is not None else {}
        data, missed = self._attach_messages(participant, req.data.get("data_since"), now)
        self.send(
            ok(
                req,
                **resumable,
                **data,
                room={"name": room.name, "sid": room.sid},
                participant={"sid": sid, "identity": participant.identity, "name": participant.name},
                participants=[p.info() for p in others],
                ice_servers=[],
                recording=self.recordings.active(room.name) if self.recordings is not None else None,
                captions=self.captions.join_info(room.name) if self.captions is not None else None,
            )
        )
        for message in missed:
            self.send(message)
        if participant.auto_subscribe and claims.grants.can_subscribe:
            participant.desired.update(room.router.tracks)
            participant.renegotiate()

    def _resume(self, req: Request, now: float) -> None:
        """Take over a participant whose connection dropped: same sid, tracks and
        subscriptions; the events it missed follow the reply, in order."""
        if self.participant is not None:
            raise ProtocolError("conflict", "already joined")
        if self.resume is None:
            raise ProtocolError("resume_expired", "this server does not resume sessions; join again")
        try:
            state, participant, missed = self.resume.resume(req.data["token"], req.data["last_seq"], now)
        except ResumeError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        previous = state.session
        if isinstance(previous, Session) and previous is not self:
            previous.detach("resumed")  # a connection that has not noticed it is dead
        state.session = self
        state.outbox.sink = self.send
        participant.connected = True
        participant.disconnected_at = None
        participant.end_session = self.end
        self.participant = participant
        self.room = participant.room
        self.joined = True
        room = participant.room
        data, missed_data = self._attach_messages(participant, req.data.get("data_since"), now)
        self.send(
            ok(
                req,
                **data,
                room={"name": room.name, "sid": room.sid},
                participant={"sid": participant.sid, "identity": participant.identity, "name": participant.name},
                participants=[p.info() for p in room.visible() if p is not participant],
                resume_token=state.token,
                last_seq=state.outbox.log.last_seq,
                replayed=len(missed),
            )
        )
        for message in missed + missed_data:
            self.send(message)
        if participant.offer_pending:
            # The answer may have been lost with the connection: offer again now.
            participant.offer_deadline = now
            participant.on_timer(now, self.rooms.subscriber_answer_timeout_s)

    def _refused(
        self, code: str, message: str, identity: str | None = None, room: str | None = None, what: str = "join"
    ) -> None:
        audit = self.moderation.audit if self.moderation is not None else None
        if audit is not None:
            audit.write("refused", what=what, room=room, identity=identity, code=code, message=message,
                        remote=self.peer.get("remote"), user_agent=self.peer.get("user_agent"))

    def _on_publish(self, req: Request, participant: Participant, now: float) -> None:
        if not participant.claims.grants.can_publish:
            self._refused("forbidden", "publish without canPublish", participant.identity, participant.room.name, "publish")
            raise ProtocolError("forbidden", "token does not allow publishing")
        media = participant.media
        # Parsing and answering both refuse SDP Ferry cannot accept (no BUNDLE,
        # setup:passive, ...) with SdpError: the client's mistake, so bad_request.
        try:
            offer = sdp.parse(req.data["sdp"], "offer")
            media.ice_restart_offered(offer.transport.ice_ufrag)
            answer, negotiated = sdp.answer_publisher(offer, transport=media.local_parameters("publisher"))
        except sdp.SdpError as exc:
            raise ProtocolError("bad_request", f"invalid offer: {exc}") from None
        # Every published track is an m-line in every subscriber's SDP: bounded per publisher.
        count = sum(1 for m in negotiated.media if not m.rejected and m.direction in ("recvonly", "sendrecv"))
        limit = self.rooms.max_tracks_per_participant
        if count > limit:
            raise ProtocolError("too_many_tracks", f"the offer publishes {count} tracks; at most {limit} are allowed")
        if participant.allowed_sources is not None and self.moderation is not None:
            sources = sdp_sources(negotiated.media, offer.media, req.data.get("tracks") or {}, media.publisher.tracks_by_mid)
            try:
                self.moderation.check_publish(participant, sources)
            except ModerationError as exc:
                self._refused(exc.code, exc.message, participant.identity, participant.room.name, "publish")
                raise ProtocolError(exc.code, exc.message) from None
        added, removed = media.apply_publisher(
            offer.transport, negotiated.media, offer.media, req.data.get("tracks") or {}
        )
        self.send(ok(req, sdp=answer, tracks=[t.info() for t in participant.tracks()]))
        room = participant.room
        if removed:
            room.tracks_unpublished(participant, removed)
        if added:
            room.tracks_published(participant, added)

    def _on_subscriber_answer(self, req: Request, participant: Participant, now: float) -> None:
        try:
            participant.apply_subscriber_answer(
                req.data["sdp"], req.data["version"], now, self.rooms.subscriber_answer_timeout_s
            )
        except LookupError as exc:
            raise ProtocolError("conflict", str(exc)) from None
        except ValueError as exc:
            raise ProtocolError("bad_request", f"invalid answer: {exc}") from None
        self.send(ok(req))

    def _on_ice_restart(self, req: Request, participant: Participant, now: float) -> None:
        """Restart ICE on the subscriber connection: a new subscriber_offer with new
        credentials follows (the publisher side restarts with a publish offer whose ufrag
        changed)."""
        self.send(ok(req))
        participant.restart_ice()

    def _on_trickle(self, req: Request, participant: Participant, now: float) -> None:
        # Ferry is ICE-lite: it learns client addresses from their connectivity checks.
        self.send(ok(req))

    def _on_subscribe(self, req: Request, participant: Participant, now: float) -> None:
        if not participant.claims.grants.can_subscribe:
            raise ProtocolError("forbidden", "token does not allow subscribing")
        tracks = participant.room.router.tracks
        unknown = [sid for sid in req.data["track_sids"] if sid not in tracks]
        if unknown:
            raise ProtocolError("not_found", f"unknown track {unknown[0]}")
        participant.desired.update(req.data["track_sids"])
        participant.renegotiate()
        self.send(ok(req))

    def _on_unsubscribe(self, req: Request, participant: Participant, now: float) -> None:
        participant.desired.difference_update(req.data["track_sids"])
        participant.renegotiate()
        self.send(ok(req))

    def _on_mute(self, req: Request, participant: Participant, now: float) -> None:
        sid = req.data["track_sid"]
        track = next((t for t in participant.tracks() if t.sid == sid), None)
        if track is None:
            raise ProtocolError("not_found", f"you publish no track {sid}")
        if not track.forwarding and not req.data["muted"]:
            raise ProtocolError("forbidden", "a moderator muted this track; only a moderator can unmute it")
        track.muted = bool(req.data["muted"])
        self.send(ok(req))
        participant.room.track_muted(participant, track)

    def _on_update_subscription(self, req: Request, participant: Participant, now: float) -> None:
        data = req.data
        sid = data["track_sid"]
        # Each field is remembered on its own, so the web client's size reports do not
        # undo a pin, nor a pin the size (a missing field keeps its last value).
        size = None
        if "width" in data or "height" in data:
            size = (data.get("width") or 0, data.get("height") or 0)
        try:
            settings = participant.room.router.update_subscription(
                participant.sid,
                sid,
                max_layer=data.get("max_layer"),
                size=size,
                enabled=data["enabled"] if "enabled" in data else None,
            )
        except LookupError:
            raise ProtocolError("not_found", f"not subscribed to {sid}") from None
        self.send(ok(req, max_layer=settings.max_layer, enabled=settings.enabled))

    def _on_start_recording(self, req: Request, participant: Participant, now: float) -> None:
        service = self._recording_service(participant)
        try:
            info = service.start(participant.room.name, by=participant.identity)
        except RecordingError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        self.send(ok(req, recording_id=info["id"], dir=info["dir"]))

    def _on_stop_recording(self, req: Request, participant: Participant, now: float) -> None:
        """Replies once capture stopped; `recording_stopped` goes to everyone meanwhile."""
        service = self._recording_service(participant)
        active = service.active(participant.room.name)
        try:
            service.request_stop(participant.room.name, "stopped")
        except RecordingError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        assert active is not None
        self.send(ok(req, recording_id=active["id"], dir=active["dir"]))

    def _recording_service(self, participant: Participant) -> RecordingService:
        if self.recordings is None:
            raise ProtocolError("not_found", "this server does not record")
        try:
            check_record(participant.claims, participant.room.name)
        except AuthError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        return self.recordings

    def _on_set_captions(self, req: Request, participant: Participant, now: float) -> None:
        """Replies once the backend is loaded (at once when it is); `captions_state` goes to everyone."""
        if self.captions is None:
            raise ProtocolError("captions_unavailable", "this server has no captions")
        try:
            check_captions_admin(participant.claims, participant.room.name)
        except AuthError as exc:
            raise ProtocolError(exc.code, exc.message) from None

        def done(error: CaptionError | None, state: dict[str, object] | None) -> None:
            if self.ended_reason is not None:
                return
            if error is not None:
                self._error(req.type, req.id, error.code, error.message)
            else:
                self.send(ok(req, captions=state))

        data = req.data
        self.captions.request(
            participant.room.name,
            enabled=data["enabled"],
            backend=data["backend"],
            language=data["language"],
            by=participant.identity,
            done=done,
        )

    def _attach_messages(
        self, participant: Participant, data_since: int | None, now: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Room messages for a joined or resumed session: the reply's ``data`` field and
        the ``data`` events it missed (sent after the reply)."""
        if self.messages is None:
            return {}, []
        info, missed = self.messages.attach(self, participant, data_since, now, self.send_datagram)
        return {"data": info}, missed

    def _on_send_data(self, req: Request, participant: Participant, now: float) -> None:
        if self.messages is None:
            raise ProtocolError("not_found", "this server has no room messages")
        self.messages.send(self, participant, req, now)

    def _on_data_ack(self, req: Request, participant: Participant, now: float) -> None:
        if self.messages is None:
            raise ProtocolError("not_found", "this server has no room messages")
        self.messages.ack(self, participant, req, now)

    def _on_leave(self, req: Request, participant: Participant, now: float) -> None:
        self.send(ok(req))
        self.leave(now)
        if self._close is not None:
            self._close()

    # -- lifecycle ---------------------------------------------------------------------
    def _detach_messages(self) -> None:
        if self.messages is not None:
            self.messages.detach(self)

    def leave(self, now: float) -> None:
        self._detach_messages()
        participant, room = self.participant, self.room
        self.participant = None
        self.room = None
        if participant is not None and room is not None:
            room.remove(participant, reason="left", now=now)

    def end(self, reason: str) -> None:
        """The server ends this session: tell the client why, then close its socket.

        ``replaced``: the same identity joined from elsewhere (the room has already
        removed this participant). ``server_shutdown``: clients should reconnect
        elsewhere; the rooms are closed afterwards as a whole (removing participants one
        by one would send everyone a ``participant_left`` and a new offer per leaver).
        The ``leave`` event is the last message; frames the client sends afterwards are
        dropped.
        """
        if self.ended_reason is not None:
            return
        self.ended_reason = reason
        self._detach_messages()
        participant = self.participant
        self.participant = None
        self.room = None
        if participant is not None:
            participant.end_session = None
            participant.connected = False  # nothing more is emitted to it
        try:
            self.send({"type": "leave", "reason": reason})
        except Exception:  # the socket may be gone already; closing is all that is left
            log.debug("leave to a closed socket", exc_info=True)
        if self._close is not None:
            self._close()

    def detach(self, reason: str) -> None:
        """Another connection resumed this session's participant: tell this client
        (``leave {reason}``) and close, leaving the participant as it is."""
        if self.ended_reason is not None:
            return
        self.ended_reason = reason
        self._detach_messages()
        self.participant = None
        self.room = None
        try:
            self.send({"type": "leave", "reason": reason})
        except Exception:  # the socket may be gone already; closing is all that is left
            log.debug("leave to a closed socket", exc_info=True)
        if self._close is not None:
            self._close()

    def disconnected(self, now: float) -> None:
        """Socket closed without leave: keep the participant for the grace period."""
        self._detach_messages()
        participant = self.participant
        if participant is None:
            return
        participant.connected = False
        participant.disconnected_at = now
        if self.resume is not None:
            self.resume.disconnected(self, participant)

