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

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy

from .channel import FerryError, RequestTimeout, SignalingChannel  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
TrackKey = tuple[str, str]
"""(participant_sid, track_sid), as carried by the subscriber offer's ``a=msid`` line."""


# --------------------------------------------------------------------------- errors


class ConnectTimeout(FerryError, TimeoutError):
    """A peer connection did not reach ``connected`` in time.

    aiortc stays in ``connecting`` forever when, for instance, a TURN relay refuses the
    allocation, so every wait on connectivity is bounded and raises this.
    """


# --------------------------------------------------------------------------- loopback


class allow_loopback(contextlib.AbstractContextManager["allow_loopback"]):  # noqa: N801
    """Make aioice gather a host candidate on 127.0.0.1 (and only there).

    aioice's ``get_host_addresses`` deliberately skips 127.0.0.1, so an aiortc client in
    a loopback-only network namespace gathers no candidate at all, and in the host
    namespace it would use eth0 (tests must never send there, DESIGN §8). This patches
    ``aioice.ice.get_host_addresses`` process-wide to return ``["127.0.0.1"]``.

    Use it as a context manager (restored on exit) or call it once for the lifetime of
    the process (the CLI does this); ``undo()`` restores explicitly. Not needed with a
    relay-only policy, where aioice gathers no host candidates anyway.
    """

    def __init__(self, addresses: list[str] | None = None) -> None:
        self.addresses = list(addresses or ["127.0.0.1"])
        self._previous: Callable[..., list[str]] | None = aioice.ice.get_host_addresses
        addrs = self.addresses

        def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in addrs if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        aioice.ice.get_host_addresses = _loopback_host_addresses

    def undo(self) -> None:
        """Restore the lookup that was in place when this patch was applied."""
        if self._previous is not None:
            aioice.ice.get_host_addresses = self._previous
            self._previous = None

    def __exit__(self, *exc: object) -> None:
        self.undo()


# --------------------------------------------------------------------------- SDP helpers


@dataclass
class MediaSection:
    """What the client needs from one m-line of a subscriber offer."""

    mid: str | None
    kind: str
    port: int
    direction: str
    msid: TrackKey | None


def parse_media_sections(sdp: str) -> list[MediaSection]:
    """Extract mid, kind, direction and ``a=msid`` for every m-line of an SDP.

    Done by hand rather than through aiortc's track ids because aiortc only honours an
    msid when the session also has a matching ``a=msid-semantic: WMS`` line; the mid is
    what reliably links an m-line to the transceiver aiortc creates.
    """
    sections: list[MediaSection] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            sections.append(MediaSection(None, parts[0], int(parts[1]), "sendrecv", None))
        elif not sections:
            continue
        elif line.startswith("a=mid:"):
            sections[-1].mid = line[6:]
        elif line.startswith("a=msid:"):
            bits = line[7:].split()
            if len(bits) >= 2:
                sections[-1].msid = (bits[0], bits[1])
        elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            sections[-1].direction = line[2:]
    return sections


# --------------------------------------------------------------------------- sink


@dataclass
class TrackSink:
    """Consumes one remote track (``recv()`` loop) and counts what decoded.

    Times are ``time.monotonic()`` seconds. ``first_keyframe_at`` is set from the
    decoder's key-frame flag when PyAV exposes it; aiortc's VP8 decoder only yields
    pictures once it has a key frame, so ``first_frame_at`` is the first decodable
    picture either way.
    """

    participant_sid: str
    track_sid: str
    kind: str
    track: MediaStreamTrack
    received_frames: int = 0
    received_audio_samples: int = 0
    first_frame_at: float | None = None
    first_keyframe_at: float | None = None
    last_frame_at: float | None = None
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    ended: bool = False
    started_at: float = field(default_factory=time.monotonic)
    on_frame: Callable[[Any], None] | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the consuming task (idempotent)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                break
            except Exception:  # a decoder error must not kill the sink silently
                logger.exception("sink %s/%s: recv failed", self.participant_sid, self.track_sid)
                break
            self._count(frame)
        self.ended = True

    def _count(self, frame: Any) -> None:
        now = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        if self.kind == "video":
            self.received_frames += 1
            self.width, self.height = frame.width, frame.height
            if self.first_keyframe_at is None and getattr(frame, "key_frame", False):
                self.first_keyframe_at = now
        else:
            self.received_frames += 1
            self.received_audio_samples += frame.samples
            self.sample_rate = frame.sample_rate
        if self.on_frame is not None:
            self.on_frame(frame)

    def rebind(self, participant_sid: str, track_sid: str) -> None:
        """The server reused this m-line for another track: restart the counters."""
        self.participant_sid, self.track_sid = participant_sid, track_sid
        self.received_frames = self.received_audio_samples = 0
        self.first_frame_at = self.first_keyframe_at = self.last_frame_at = None
        self.started_at = time.monotonic()

    async def stop(self) -> None:
        """Cancel the consuming task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.ended = True

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counters (used by :meth:`FerryClient.stats`)."""
        return {
            "framesDecoded": self.received_frames if self.kind == "video" else None,
            "audioFrames": self.received_frames if self.kind == "audio" else None,
            "audioSamplesReceived": self.received_audio_samples if self.kind == "audio" else None,
            "width": self.width or None,
            "height": self.height or None,
            "firstFrameDelay": (self.first_frame_at - self.started_at)
            if self.first_frame_at
            else None,
            "ended": self.ended,
        }


# --------------------------------------------------------------------------- client


EventCallback = Callable[[dict[str, Any]], Any]
TrackCallback = Callable[[str, str, MediaStreamTrack], Any]


class FerryClient:
    """One participant: signaling socket, publisher PC and subscriber PC.

    Public state for tests:

    * ``events``: :class:`asyncio.Queue` of every server event (messages without ``id``),
      ``event_log``: the same events as a list (for :meth:`wait_for` predicates).
    * ``tracks``: (participant_sid, track_sid) -> remote :class:`MediaStreamTrack`, the
      tracks received *now*; ``sinks``: the same keys -> :class:`TrackSink` (kept when a
      track ends); :meth:`received` summarises every track received during the session.
    * ``participants``: sid -> ParticipantInfo, kept current from join/events.
    * ``published``: TrackInfo list from the last ``publish`` reply.
    * ``room``, ``participant``, ``ice_servers`` from the join reply.
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
        servers = list(ice_servers or [])
        if turn_url:
            servers.append(
                RTCIceServer(urls=turn_url, username=turn_username, credential=turn_password)
            )
        self._ice_servers = servers
        self.relay_only = relay_only
        self.use_server_ice_servers = use_server_ice_servers
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.sink_enabled = sink

        self.url: str | None = None
        self.server_info: dict[str, Any] = {}
        self.room: dict[str, Any] = {}
        self.participant: dict[str, Any] = {}
        self.participants: dict[str, dict[str, Any]] = {}
        self.ice_servers: list[dict[str, Any]] = []
        self.published: list[dict[str, Any]] = []

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
        self.subscriber_version: int | None = None
        self.subscriber_errors: list[BaseException] = []

        self._channel: SignalingChannel | None = None
        self._offer_worker: asyncio.Task[None] | None = None
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._mid_map: dict[str, TrackKey] = {}
        self._closed = False

    # ------------------------------------------------------------------ signaling

    async def connect(self, url: str, *, timeout: float | None = None) -> None:
        """Open the WebSocket and send ``hello`` (the reply is kept in ``server_info``)."""
        self.url = url
        t = timeout if timeout is not None else self.request_timeout
        self._channel = SignalingChannel(
            self._dispatch, request_timeout=self.request_timeout, name="client"
        )
        await self._channel.open(url, timeout=t)
        self._offer_worker = asyncio.ensure_future(self._process_offers())
        self.server_info = await self.request("hello", version=PROTOCOL_VERSION, timeout=t)

    async def request(
        self, msg_type: str, /, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send a request and await the reply carrying the same ``id``.

        Returns the reply (``ok: true``); raises :class:`FerryError` on ``ok: false``,
        :class:`RequestTimeout` after ``timeout`` seconds (default ``request_timeout``)
        and ``FerryError("closed")`` if the socket closes first. Events that arrive
        meanwhile go to ``events`` as usual.
        """
        if self._channel is None:
            raise FerryError("closed", "not connected")
        return await self._channel.request(msg_type, timeout=timeout, **fields)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        """An event from the server (replies are matched by the channel)."""
        self._apply_event(msg)
        self.event_log.append(msg)
        self.events.put_nowait(msg)
        if msg.get("type") == "subscriber_offer":
            self._offers.put_nowait(msg)
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

    async def join(self, token: str, *, auto_subscribe: bool = True) -> dict[str, Any]:
        """Send ``join``; returns the reply and records room, self and participants."""
        reply = await self.request("join", token=token, auto_subscribe=auto_subscribe)
        self.room = reply.get("room") or {}
        self.participant = reply.get("participant") or {}
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

    async def _process_offers(self) -> None:
        """Answer ``subscriber_offer`` events strictly one at a time, in arrival order.

        Only the newest queued offer is answered: the server accepts an answer to its
        latest offer only (it offers again when an answer is late), and each offer
        describes the whole session.
        """
        while True:
            offer = await self._offers.get()
            while not self._offers.empty():
                offer = self._offers.get_nowait()
            try:
                await self._answer_offer(offer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, FerryError) and exc.code == "conflict":
                    logger.info("subscriber offer v%s superseded", offer.get("version"))
                    continue
                logger.exception("subscriber offer v%s failed", offer.get("version"))
                self.subscriber_errors.append(exc)

    async def _answer_offer(self, offer: dict[str, Any]) -> None:
        if self.subscriber is None:
            self.subscriber = RTCPeerConnection(self._configuration())
            self.subscriber.on("track", self._on_remote_track)
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

    async def wait_for(
        self,
        predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str = "",
    ) -> Any:
        """Poll ``predicate`` (sync or async) until it returns something truthy.

        Returns that value, or raises :class:`TimeoutError` at the deadline. Tests use
        this instead of fixed sleeps so they are as fast as the system allows and fail
        with a clear message when it does not get there.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            await asyncio.sleep(interval)

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
        out: dict[str, Any] = {
            "publisher": await self._pc_stats(self.publisher, sending=True),
            "subscriber": await self._pc_stats(self.subscriber, sending=False),
        }
        totals = {
            "bytesSent": 0,
            "bytesReceived": 0,
            "packetsSent": 0,
            "packetsReceived": 0,
            "packetsLost": 0,
            "rtt": None,
        }
        for side in ("publisher", "subscriber"):
            tr = out[side].get("transport") or {}
            totals["bytesSent"] += tr.get("bytesSent", 0)
            totals["bytesReceived"] += tr.get("bytesReceived", 0)
        for t in out["publisher"]["tracks"].values():
            totals["packetsSent"] += t.get("packetsSent") or 0
            if t.get("rtt") is not None:
                totals["rtt"] = t["rtt"] if totals["rtt"] is None else max(totals["rtt"], t["rtt"])
        for t in out["subscriber"]["tracks"].values():
            totals["packetsReceived"] += t.get("packetsReceived") or 0
            totals["packetsLost"] += t.get("packetsLost") or 0
        out["totals"] = totals
        out["received"] = self.received()
        return out

    async def _pc_stats(self, pc: RTCPeerConnection | None, *, sending: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "state": pc.connectionState if pc else None,
            "transport": {},
            "tracks": {},
        }
        if pc is None:
            return result
        sid_by_kind: dict[str, list[str]] = {}
        for info in self.published:
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
                found = next((k for k, t in self.tracks.items() if t is tr.receiver.track), None)
                if found is None:
                    continue
                key = f"{found[0]}/{found[1]}"
            entry: dict[str, Any] = {"kind": tr.kind, "mid": tr.mid}
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
                    rate = 90000 if tr.kind == "video" else 48000
                    entry.update(
                        rtt=s.roundTripTime,
                        packetsLost=s.packetsLost,
                        fractionLost=s.fractionLost,
                        jitter=s.jitter / rate,
                    )
                elif s.type == "inbound-rtp":
                    # aiortc reports jitter in RTP clock units; convert to seconds.
                    rate = 90000 if tr.kind == "video" else 48000
                    entry.update(
                        ssrc=s.ssrc,
                        packetsReceived=s.packetsReceived,
                        packetsLost=s.packetsLost,
                        jitter=s.jitter / rate,
                    )
            if not sending:
                sink = self.sinks.get(found)  # type: ignore[arg-type]
                if sink is not None:
                    entry.update(sink.summary())
            result["tracks"][key] = entry
        return result

    # ------------------------------------------------------------------ teardown

    async def leave(self) -> None:
        """Send ``leave`` (errors ignored: the session ends either way), then close."""
        if self._channel is not None and not self._channel.closed:
            with contextlib.suppress(FerryError, TimeoutError):
                await self.request("leave", timeout=min(self.request_timeout, 5.0))
        await self.close()

    async def close(self) -> None:
        """Close PCs, sinks and the socket without ``leave`` (idempotent).

        Per the protocol the server then keeps the participant for its reconnect grace
        period; tests of reconnect rely on exactly this.
        """
        if self._closed:
            return
        self._closed = True
        for sink in list(self.sinks.values()):
            await sink.stop()
        for task in (self._offer_worker,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await pc.close()
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> FerryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- CLI


def _make_tracks(spec: str | None) -> list[MediaStreamTrack]:
    from signaling.media_sources import TestPatternVideoTrack, ToneAudioTrack, file_tracks

    if not spec:
        return []
    if spec == "pattern":
        return [TestPatternVideoTrack()]
    if spec == "tone":
        return [ToneAudioTrack()]
    if spec == "both":
        return [ToneAudioTrack(), TestPatternVideoTrack()]
    audio, video = file_tracks(spec)
    return [t for t in (audio, video) if t is not None]


async def run_join(args: argparse.Namespace) -> int:
    """``ferry client join``: join, optionally publish, print a JSON stats line per interval.

    Stats lines show the tracks received at that moment (empty once the others have
    left); the final ``{"event": "left", "received": ...}`` line lists every track
    received during the call with its counters.
    """
    patch = None if args.no_loopback or args.relay else allow_loopback()
    client = FerryClient(
        turn_url=args.turn,
        turn_username=args.turn_user,
        turn_password=args.turn_pass,
        relay_only=args.relay,
        connect_timeout=args.connect_timeout,
        use_server_ice_servers=args.server_ice_servers,
    )
    start = time.monotonic()
    try:
        await client.connect(args.url)
        reply = await client.join(args.token)
        print(
            json.dumps(
                {
                    "event": "joined",
                    "room": reply.get("room"),
                    "participant": reply.get("participant"),
                }
            ),
            flush=True,
        )
        tracks = _make_tracks(args.publish)
        if tracks:
            published = await client.publish(*tracks)
            print(json.dumps({"event": "published", "tracks": published}), flush=True)
        end = start + args.duration if args.duration > 0 else float("inf")
        while time.monotonic() < end:
            await asyncio.sleep(min(args.stats_interval, max(0.0, end - time.monotonic())))
            line = {"t": round(time.monotonic() - start, 3), **await client.stats()}
            print(json.dumps(line, default=str), flush=True)
        await client.leave()
        # The last word: what arrived over the whole call, whoever left first.
        summary = {"event": "left", "t": round(time.monotonic() - start, 3), "received": client.received()}
        print(json.dumps(summary, default=str), flush=True)
        return 0
    except FerryError as exc:
        print(
            json.dumps({"event": "error", "code": exc.code, "message": exc.message}),
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        await client.close()
        if patch is not None:
            patch.undo()


def _cmd_join(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_join(args))
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ferry client join ...`` to the main CLI (called by ``signaling.cli``).

    The handler is stored as ``func`` (``args.func(args) -> int``, synchronous; it runs
    its own event loop).
    """
    client = subparsers.add_parser("client", help="Python test client (aiortc)")
    sub = client.add_subparsers(dest="client_command", required=True)
    join = sub.add_parser("join", help="join a room, optionally publish, print JSON stats lines")
    join.add_argument("--url", default="ws://127.0.0.1:7880/ws", help="signaling WebSocket URL")
    join.add_argument("--token", required=True, help="JWT (see `ferry token`)")
    join.add_argument(
        "--publish", default=None, help="pattern | tone | both | path to a media file"
    )
    join.add_argument(
        "--duration", type=float, default=10.0, help="seconds before leaving (0 = forever)"
    )
    join.add_argument(
        "--stats-interval", type=float, default=1.0, help="seconds between stats lines"
    )
    join.add_argument(
        "--connect-timeout", type=float, default=10.0, help="ICE/DTLS connect timeout"
    )
    join.add_argument("--turn", default=None, help="TURN URL, e.g. turn:127.0.0.1:3478")
    join.add_argument("--turn-user", default=None)
    join.add_argument("--turn-pass", default=None)
    join.add_argument("--relay", action="store_true", help="relay-only ICE policy (needs --turn)")
    join.add_argument(
        "--server-ice-servers", action="store_true", help="also use the join reply's ice_servers"
    )
    join.add_argument(
        "--no-loopback", action="store_true", help="do not patch aioice to gather 127.0.0.1"
    )
    join.set_defaults(func=_cmd_join)
