"""Ferry's Python client: signaling over WebSocket plus aiortc publisher/subscriber PCs.

Used by integration tests, netem scenarios and ``ferry client join``. It speaks the
protocol in ``docs/protocol.md`` exactly: ``hello`` first, ``join`` with a JWT, a
*publisher* RTCPeerConnection that offers sendonly tracks (``publish``), and a
*subscriber* RTCPeerConnection whose offers come from the server (``subscriber_offer``
events, answered with ``subscriber_answer``, strictly one at a time in arrival order).

Typical test use::

    with allow_loopback():                     # aioice would skip 127.0.0.1 otherwise
        client = FerryClient()
        await client.connect("ws://127.0.0.1:7880/ws")
        await client.join(token)
        await client.publish(TestPatternVideoTrack(), ToneAudioTrack())
        await client.wait_for(lambda: any(s.received_frames > 10 for s in client.sinks.values()))
        print(await client.stats())
        await client.leave()

Every remote track is consumed by a :class:`TrackSink` (unless ``sink=False``), which
decodes it and counts frames/samples, so tests can assert that media really decodes
without writing files.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy

from signaling.sdp import parse_media_sections

from . import nack_repeat, video_jitter
from .channel import ConnectTimeout, FerryError, RequestTimeout
from .loopback import allow_loopback
from .rtc_stats import peer_connection_stats, stats_totals
from .session import ClientSession
from .sink import TrackKey, TrackSink

__all__ = [
    "ConnectTimeout",
    "FerryClient",
    "FerryError",
    "RequestTimeout",
    "TrackSink",
    "allow_loopback",
]

logger = logging.getLogger(__name__)


EventCallback = Callable[[dict[str, Any]], Any]
TrackCallback = Callable[[str, str, MediaStreamTrack], Any]


class FerryClient(ClientSession):
    """One participant: signaling socket, publisher PC and subscriber PC.

    Public state for tests:

    * ``events``: :class:`asyncio.Queue` of every server event (messages without ``id``),
      ``event_log``: the same events as a list (for :meth:`wait_for` predicates).
    * ``tracks``: (participant_sid, track_sid) -> remote :class:`MediaStreamTrack`, the
      tracks received *now*; ``sinks``: the same keys -> :class:`TrackSink` (kept when a
      track ends); :meth:`received` summarises every track received during the session.
    * ``participants``: sid -> ParticipantInfo, kept current from join/events.
    * ``ice_servers`` from the join reply, and what :class:`ClientSession` keeps
      (``server_info``, ``room``, ``participant``, ``published``...).
    """

    def __init__(
        self,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        turn_url: str | None = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        relay_only: bool = False,
        use_server_ice_servers: bool = False,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        sink: bool = True,
        on_track: TrackCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        """Configure ICE and timeouts; nothing connects until :meth:`connect`.

        ICE servers default to none at all, never aiortc's public STUN default: tests run
        on loopback. ``turn_url`` (e.g. ``turn:127.0.0.1:3478``) adds a TURN server (aiortc
        uses only the first TURN URL); ``relay_only`` sets the relay transport policy,
        which is how netem's impairing relay is put in the path.
        ``use_server_ice_servers`` appends the join reply's ``ice_servers`` as well.
        """
        super().__init__(
            name="client", request_timeout=request_timeout, connect_timeout=connect_timeout
        )
        servers = list(ice_servers or [])
        if turn_url:
            servers.append(
                RTCIceServer(urls=turn_url, username=turn_username, credential=turn_password)
            )
        self._ice_servers = servers
        self.relay_only = relay_only
        self.use_server_ice_servers = use_server_ice_servers
        self.sink_enabled = sink
        self.participants: dict[str, dict[str, Any]] = {}
        self.ice_servers: list[dict[str, Any]] = []

        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.event_log: list[dict[str, Any]] = []
        self.tracks: dict[TrackKey, MediaStreamTrack] = {}
        self.sinks: dict[TrackKey, TrackSink] = {}
        # Counters of tracks whose sink was rebound to a recycled m-line's next track.
        self.past_tracks: dict[TrackKey, dict[str, Any]] = {}
        self.on_track: list[TrackCallback] = [on_track] if on_track else []
        self.on_event: list[EventCallback] = [on_event] if on_event else []

        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self._mid_map: dict[str, TrackKey] = {}
        self._nack_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ signaling

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        """An event from the server (replies are matched by the channel)."""
        self._apply_event(msg)
        self.event_log.append(msg)
        self.events.put_nowait(msg)
        self._queue_offer(msg)
        for cb in list(self.on_event):
            res = cb(msg)
            if inspect.isawaitable(res):
                await res

    def _apply_event(self, msg: dict[str, Any]) -> None:
        """Keep ``participants`` and ``tracks`` current from room events."""
        kind = msg.get("type")
        if kind == "participant_joined":
            info = msg.get("participant") or {}
            if info.get("sid"):
                self.participants[info["sid"]] = info
        elif kind == "participant_left":
            sid = msg.get("sid")
            self.participants.pop(sid, None)
            for key in [k for k in self.tracks if k[0] == sid]:
                self.tracks.pop(key, None)
        elif kind == "track_published":
            track = msg.get("track") or {}
            p = self.participants.setdefault(
                track.get("participant_sid", ""),
                {"sid": track.get("participant_sid"), "tracks": []},
            )
            p.setdefault("tracks", [])
            p["tracks"] = [t for t in p["tracks"] if t.get("sid") != track.get("sid")] + [track]
        elif kind == "track_unpublished":
            psid, tsid = msg.get("participant_sid"), msg.get("track_sid")
            self.tracks.pop((psid, tsid), None)  # type: ignore[arg-type]
            p = self.participants.get(psid or "")
            if p:
                p["tracks"] = [t for t in p.get("tracks", []) if t.get("sid") != tsid]
        elif kind == "track_muted":
            p = self.participants.get(msg.get("participant_sid") or "")
            for t in (p or {}).get("tracks", []):
                if t.get("sid") == msg.get("track_sid"):
                    t["muted"] = msg.get("muted")

    async def next_event(
        self, msg_type: str | None = None, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Pop events from ``events`` until one of ``msg_type`` (any type if None) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {msg_type or 'event'} within {timeout}s")
            ev = await asyncio.wait_for(self.events.get(), left)
            if msg_type is None or ev.get("type") == msg_type:
                return ev

    # ------------------------------------------------------------------ room

    async def join(self, token: str, *, auto_subscribe: bool = True, data_since: int | None = None) -> dict[str, Any]:
        """Send ``join``; returns the reply and records room, self and participants."""
        reply = await super().join(token, auto_subscribe=auto_subscribe, data_since=data_since)
        self.ice_servers = reply.get("ice_servers") or []
        for info in reply.get("participants") or []:
            if info.get("sid"):
                self.participants[info["sid"]] = info
        return reply

    def _configuration(self) -> RTCConfiguration:
        servers = list(self._ice_servers)
        if self.use_server_ice_servers:
            for s in self.ice_servers:
                urls = s.get("urls") or s.get("url")
                if urls:
                    servers.append(
                        RTCIceServer(
                            urls=urls, username=s.get("username"), credential=s.get("credential")
                        )
                    )
        return RTCConfiguration(
            iceServers=servers,
            iceTransportPolicy=RTCIceTransportPolicy.RELAY
            if self.relay_only
            else RTCIceTransportPolicy.ALL,
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        )

    async def publish(
        self,
        *tracks: MediaStreamTrack,
        sources: dict[str, str] | None = None,
        wait_connected: bool = True,
    ) -> list[dict[str, Any]]:
        """Add ``tracks`` to the publisher PC (sendonly), offer them and apply the answer.

        ``sources`` maps a track's id (or its kind, ``"audio"``/``"video"``) to a source
        name; the default is microphone for audio and camera for video. Calling again
        with more tracks re-offers on the same PC, as the protocol allows. Returns the
        reply's TrackInfo list. With ``wait_connected`` it also waits (bounded by
        ``connect_timeout``) until ICE+DTLS are up, raising :class:`ConnectTimeout`.
        """
        if self.publisher is None:
            self.publisher = RTCPeerConnection(self._configuration())
        pc = self.publisher
        track_map: dict[str, dict[str, str]] = {}
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                caps = RTCRtpSender.getCapabilities("video").codecs
                vp8 = [c for c in caps if c.mimeType.lower() == "video/vp8"]
                rest = [c for c in caps if c.mimeType.lower() != "video/vp8"]
                transceiver.setCodecPreferences(vp8 + rest)
            src = (sources or {}).get(track.id) or (sources or {}).get(track.kind)
            src = src or ("camera" if track.kind == "video" else "microphone")
            track_map[track.id] = {"source": src}
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)  # aiortc gathers all candidates here
        reply = await self.request("publish", sdp=pc.localDescription.sdp, tracks=track_map)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        self.published = list(reply.get("tracks") or [])
        if wait_connected:
            await self.wait_connected("publisher")
        return self.published

    async def mute(self, track_sid: str, muted: bool = True) -> dict[str, Any]:
        """Send ``mute`` for one of our published tracks (aiortc has no ``enabled`` switch)."""
        return await self.request("mute", track_sid=track_sid, muted=muted)

    async def wait_connected(self, which: str = "publisher", timeout: float | None = None) -> None:
        """Wait until the ``publisher``/``subscriber`` PC is ``connected`` (bounded)."""
        t = self.connect_timeout if timeout is None else timeout

        def state() -> str | None:
            pc = self.publisher if which == "publisher" else self.subscriber
            return pc.connectionState if pc is not None else None

        try:
            await self.wait_for(lambda: state() in ("connected", "failed", "closed"), timeout=t)
        except TimeoutError:
            raise ConnectTimeout(
                "connect_timeout", f"{which} PC still {state()!r} after {t}s"
            ) from None
        if state() != "connected":
            raise ConnectTimeout("connect_timeout", f"{which} PC ended {state()!r}")

    # ------------------------------------------------------------------ subscriber

    async def _answer_offer(self, offer: dict[str, Any]) -> None:
        if self.subscriber is None:
            self.subscriber = RTCPeerConnection(self._configuration())
            self.subscriber.on("track", self._on_remote_track)
            self._nack_task = asyncio.ensure_future(nack_repeat.repeat_nacks(self._video_receivers))
        pc = self.subscriber
        sections = parse_media_sections(offer["sdp"])
        new_map = {
            s.mid: s.msid
            for s in sections
            if s.mid is not None
            and s.msid is not None
            and s.port != 0
            and s.direction in ("sendonly", "sendrecv")
        }
        self._mid_map = new_map  # read by _on_remote_track during setRemoteDescription
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        self._sync_receivers()
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await self.request(
            "subscriber_answer", sdp=pc.localDescription.sdp, version=offer.get("version")
        )
        self.subscriber_version = offer.get("version")

    def _on_remote_track(self, track: MediaStreamTrack) -> None:
        self._sync_receivers()

    def _sync_receivers(self) -> None:
        """Map every receiving transceiver to its (participant, track) via its mid.

        Handles new m-lines, m-lines the server recycled for another track (msid
        changed: the sink is rebound) and m-lines that went inactive (dropped).
        """
        if self.subscriber is None:
            return
        live: set[TrackKey] = set()
        for tr in self.subscriber.getTransceivers():
            if tr.kind == "video":  # before media flows
                video_jitter.install(tr.receiver)  # a hole not filled in time ends in a keyframe
                nack_repeat.install(tr.receiver)  # a missing packet is asked for again
            track = tr.receiver.track
            key = self._mid_map.get(tr.mid or "")
            if track is None or key is None:
                continue
            live.add(key)
            old = next((k for k, t in self.tracks.items() if t is track), None)
            if old == key:
                continue
            if old is not None:
                self.tracks.pop(old, None)
            # The sink of a recycled m-line is found by its track: its key may already be
            # gone from ``tracks`` (track_unpublished, an inactive section), and a second
            # sink on the same track would split its frames with the first.
            prev = next((k for k, s in self.sinks.items() if s.track is track), None)
            if prev is not None and prev != key:
                sink = self.sinks.pop(prev)
                self.past_tracks[prev] = {"kind": sink.kind, **sink.summary()}
                sink.rebind(*key)
                self.sinks[key] = sink
            self.tracks[key] = track
            if self.sink_enabled and key not in self.sinks:
                sink = TrackSink(key[0], key[1], track.kind, track)
                self.sinks[key] = sink
                sink.start()
            for cb in list(self.on_track):
                res = cb(key[0], key[1], track)
                if inspect.isawaitable(res):
                    asyncio.ensure_future(res)
        for key in [k for k in self.tracks if k not in live]:
            self.tracks.pop(key, None)

    # ------------------------------------------------------------------ helpers

    def received(self) -> dict[str, dict[str, Any]]:
        """Every remote track received during the session, ended ones included.

        Keyed ``"participant_sid/track_sid"``; each entry is the sink's counters plus
        ``kind`` and ``live`` (still received; false after close). ``stats()["subscriber"]["tracks"]`` shows
        only live tracks, so once the other side has left it is empty: this is what tells
        "received everything, then they left" from "received nothing".
        """
        out = {f"{k[0]}/{k[1]}": {**v, "live": False} for k, v in self.past_tracks.items()}
        for key, sink in self.sinks.items():
            live = key in self.tracks and not self._closed
            out[f"{key[0]}/{key[1]}"] = {"kind": sink.kind, **sink.summary(), "live": live}
        return out

    def sink_for(self, participant_sid: str, kind: str) -> TrackSink | None:
        """The sink of ``participant_sid``'s first ``kind`` track, if subscribed."""
        for (psid, _), sink in self.sinks.items():
            if psid == participant_sid and sink.kind == kind:
                return sink
        return None

    async def stats(self) -> dict[str, Any]:
        """Aggregated getStats of both PCs plus the sinks' decode counters.

        Shape::

            {"publisher": {"state", "transport": {...}, "tracks": {id: {...}}},
             "subscriber": {"state", "transport": {...}, "tracks": {"psid/tsid": {...}}},
             "totals": {bytesSent, bytesReceived, packetsSent, packetsReceived,
                        packetsLost, rtt},
             "received": {"psid/tsid": {...}}}    # see received(): ended tracks too

        Publisher tracks are keyed by the published track sid when known (else the local
        track id) and carry packets/bytes sent plus ``rtt``/``packetsLost``/``jitter``
        from the server's receiver reports. Subscriber tracks carry packets received,
        packetsLost, jitter (seconds) and the sink's framesDecoded / audio samples.
        aiortc keeps no per-receiver byte count; use the transport's ``bytesReceived``.
        """
        known = (self.published, self.tracks, self.sinks)
        out: dict[str, Any] = {
            "publisher": await peer_connection_stats(self.publisher, *known, sending=True),
            "subscriber": await peer_connection_stats(self.subscriber, *known, sending=False),
        }
        out["totals"] = stats_totals(out["publisher"], out["subscriber"])
        out["received"] = self.received()
        return out

    # ------------------------------------------------------------------ teardown

    def _video_receivers(self) -> list[Any]:
        if self.subscriber is None:
            return []
        return [tr.receiver for tr in self.subscriber.getTransceivers() if tr.kind == "video"]

    async def _close_media(self) -> None:
        if self._nack_task is not None:
            self._nack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nack_task
            self._nack_task = None
        for sink in list(self.sinks.values()):
            await sink.stop()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await pc.close()
