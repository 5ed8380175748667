"""Session resume on the server: binds participants, their outboxes and tokens to sessions.

The protocol side (``resume {token, last_seq}``) is in :class:`signaling.session.Session`;
this module keeps the state across connections (:mod:`signaling.resume` is the
sans-I/O core) and answers whether a resume may proceed. It is a room observer so a
participant's token dies with the participant (left, replaced, grace over, room closed).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from .resume import ResumeError, ResumeState, ResumeTokens
from .rooms import Participant, Room, RoomManager, RoomObserverBase

if TYPE_CHECKING:
    from .session import Session


class ResumeService(RoomObserverBase):
    def __init__(self, rooms: RoomManager) -> None:
        self.rooms = rooms
        self.tokens = ResumeTokens(lambda: secrets.token_urlsafe(32))
        self.resumed = 0  # resumes that succeeded (metrics, bench)
        rooms.observers.append(self)

    # -- sessions ------------------------------------------------------------------------
    def joined(self, session: Session, participant: Participant) -> dict[str, Any]:
        """A fresh join: route the participant's events through a logged outbox.

        Returns the join reply's extra fields (``resume_token``)."""
        state = self.tokens.register(participant.room.name, participant.sid)
        state.outbox.sink = participant.send
        state.session = session
        participant.send = state.outbox.send
        participant.logs_while_away = True
        return {"resume_token": state.token}

    def disconnected(self, session: Session, participant: Participant) -> None:
        state = self.tokens.get(participant.sid)
        if state is not None and state.session is session:
            state.outbox.sink = None
            state.session = None

    def resume(self, token: str, last_seq: int, now: float) -> tuple[ResumeState, Participant, list[dict[str, Any]]]:
        """Check a resume; on success the token is used up and the missed events returned.

        Raises :class:`ResumeError`. The caller then detaches ``state.session`` (a
        connection that has not noticed it is dead) and attaches itself.
        """
        state = self.tokens.redeem(token)
        room = self.rooms.rooms.get(state.room)
        participant = room.participants.get(state.sid) if room is not None else None
        if participant is None:
            self.tokens.forget(state.sid)
            raise ResumeError("resume_expired", "the participant is gone (left, replaced or grace over); join again")
        away_since = participant.disconnected_at
        if not participant.connected and away_since is not None and now - away_since > self.rooms.reconnect_grace_s:
            raise ResumeError("resume_expired", f"away longer than the {self.rooms.reconnect_grace_s:.0f} s grace")
        missed = state.outbox.log.since(last_seq)
        self.resumed += 1
        return state, participant, missed

    # -- RoomObserver --------------------------------------------------------------------
    def participant_left(self, room: Room, participant: Participant) -> None:
        self.tokens.forget(participant.sid)

    def room_closed(self, room: Room) -> None:
        for sid in self.tokens.sids_in(room.name):
            self.tokens.forget(sid)





