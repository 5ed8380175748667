"""The media engine: the only API signaling calls.

Owns the shared UDP socket, the DTLS certificate, the per-room Routers and one
ticker that drives every sans-I/O core's timers (NACK, RTCP reports, TWCC feedback,
keyframe retries, DTLS retransmission, ICE consent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from media.heap import HeapTrimmer
from media.ortc import TransportParameters
from media.routing.published_track import PublishedTrack
from media.routing.report import participant_stats, subscriber_stats
from media.routing.router import (
    TIMER_PHASES,
    MediaParticipant,
    Router,
    RouterListener,
    SubscriptionSettings,
)
from media.routing.sink import PacketSink
from media.rtp.ntp import ntp_from_unix
from media.stats import EngineStats, ParticipantStats, SubscriberStats
from media.transport.certificate import Certificate
from media.transport.udp_mux import UdpMux
from media.transport.webrtc_transport import WebRtcTransport

log = logging.getLogger("ferry.media.engine")

TICK_MS = 20.0  # every participant's timers run once per TICK_MS, in TIMER_PHASES slices


@dataclass
class EngineConfig:
    host: str = "127.0.0.1"
    port: int = 7882
    announce_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    consent_timeout_ms: float = 30000.0
    add_red: bool = True  # audio redundancy toward RED-capable subscribers that report loss


class Engine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.mux = UdpMux(self.config.host, self.config.port)
        self.certificate = Certificate.generate()
        self.stats = EngineStats()
        self.routers: dict[str, Router] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase = 0  # which slice of participants the next tick runs (Router.on_timer)
        # Monotonic ms -> wall clock, fixed once so NTP times in SR/RR are consistent.
        self._wall_offset = time.time() - time.monotonic()
        # Returns heap pages freed by churn (closed tracks' caches) to the OS (media/heap.py).
        self.heap = HeapTrimmer()

    @property
    def port(self) -> int:
        return self.mux.port

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.mux.open()
        self._schedule()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for router in list(self.routers.values()):
            router.close()
        self.routers.clear()
        self.mux.close()

    def now_ms(self) -> float:
        """The event loop's clock once started; before that the same monotonic clock
        (asyncio's loop.time() is time.monotonic()), so routers built outside a loop
        work too."""
        if self._loop is not None:
            return self._loop.time() * 1000.0
        return time.monotonic() * 1000.0

    def call_at(self, when_ms: float, callback) -> asyncio.TimerHandle:
        """One-shot timer on the engine's clock (ms), e.g. for the pacer."""
        loop = self._loop or asyncio.get_event_loop()
        return loop.call_at(when_ms / 1000.0, callback)

    def ntp_at(self, now_ms: float) -> int:
        return ntp_from_unix(now_ms / 1000.0 + self._wall_offset)

    # -- rooms and transports ------------------------------------------------------------
    def router(self, name: str, listener: RouterListener | None = None) -> Router:
        router = self.routers.get(name)
        if router is None:
            router = Router(self, name, listener)
            self.routers[name] = router
        return router

    def close_router(self, name: str) -> None:
        router = self.routers.pop(name, None)
        if router is not None:
            router.close()

    # -- internal sinks (recorder, captions: media.routing.sink) ------------------------
    def add_sink(self, room: str, track_sid: str, sink: PacketSink) -> PublishedTrack:
        """Feed `sink` every packet of a published track; returns the track (its SinkHost).

        Raises KeyError when the room or the track does not exist (any more).
        """
        return self.routers[room].add_sink(track_sid, sink)

    def remove_sink(self, room: str, track_sid: str, sink: PacketSink) -> bool:
        """Stop feeding `sink`; False when the room or track is gone (a closed track drops its sinks)."""
        router = self.routers.get(room)
        return router is not None and router.remove_sink(track_sid, sink)

    # -- subscription settings ----------------------------------------------------------
    def update_subscription(
        self,
        room: str,
        participant_sid: str,
        track_sid: str,
        *,
        max_layer: str | None = None,
        size: tuple[int, int] | None = None,
        enabled: bool | None = None,
    ) -> SubscriptionSettings:
        """A subscriber's max layer, rendered size and on/off for one track (None: as
        is); see `Router.update_subscription`. LookupError when the room is gone or the
        participant does not receive the track."""
        router = self.routers.get(room)
        if router is None:
            raise LookupError(f"no room {room}")
        return router.update_subscription(
            participant_sid, track_sid, max_layer=max_layer, size=size, enabled=enabled
        )

    def create_transport(self, *, name: str = "") -> WebRtcTransport:
        return WebRtcTransport(
            self.mux,
            self.certificate,
            consent_timeout_ms=self.config.consent_timeout_ms,
            name=name,
        )

    def local_parameters(self, transport: WebRtcTransport, *, setup: str) -> TransportParameters:
        candidates = [
            f"{i + 1} 1 udp {2130706431 - i} {ip} {self.port} typ host"
            for i, ip in enumerate(self.config.announce_ips)
        ]
        return TransportParameters(
            ice_ufrag=transport.ice_ufrag,
            ice_pwd=transport.ice_pwd,
            fingerprints=self.certificate.fingerprints(),
            setup=setup,  # type: ignore[arg-type]
            ice_lite=True,
            candidates=candidates,
        )

    # -- ticker ----------------------------------------------------------------------
    def _schedule(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(TICK_MS / TIMER_PHASES / 1000.0, self._tick)

    def _tick(self) -> None:
        now = self.now_ms()
        phase = self._phase
        self._phase = (phase + 1) % TIMER_PHASES
        if phase == 0:
            self.mux.fit_fan_out(max((len(r.participants) for r in self.routers.values()), default=0))
        opened = self.mux.open_batch()  # native send path: the tick's sends in one batch
        try:
            for router in list(self.routers.values()):
                try:
                    router.on_timer(now, phase)
                except Exception:
                    log.exception("timer error in room %s", router.name)
            self.heap.on_timer(now)
        finally:
            if opened:
                self.mux.flush()
        self._schedule()

    def _participant(self, participant_sid: str) -> MediaParticipant | None:
        for router in self.routers.values():
            participant = router.participants.get(participant_sid)
            if participant is not None:
                return participant
        return None

    def subscriber_stats(self, participant_sid: str) -> SubscriberStats | None:
        """What `participant_sid` receives now (estimate; per track: layers, pause, RTT).

        None when no room has that participant.
        """
        found = self._participant(participant_sid)
        return None if found is None else subscriber_stats(found, self.now_ms())

    def participant_stats(self, participant_sid: str) -> ParticipantStats | None:
        """Both directions of `participant_sid` (published layers, received tracks); None
        when no room has that participant."""
        found = self._participant(participant_sid)
        return None if found is None else participant_stats(found, self.now_ms())

    def snapshot(self) -> dict[str, object]:
        """Counters for /metrics (pulled at scrape time, never pushed per packet)."""
        data = self.stats.as_dict()
        drops = dict(data["drops"])  # type: ignore[arg-type]
        for reason, count in self.mux.drops.items():
            drops[f"mux_{reason}"] = count
        for router in self.routers.values():
            for participant in router.participants.values():
                for transport in (
                    participant.publisher.transport,
                    participant.subscriber.transport,
                ):
                    for reason, count in transport.drops.items():
                        drops[reason] = drops.get(reason, 0) + count
        data["drops"] = drops
        for router in self.routers.values():
            for track in router.tracks.values():
                for layer in track.layers:
                    data["upstream_lost"] += layer.nack.lost  # type: ignore[operator]
                    data["upstream_recovered"] += layer.nack.recovered  # type: ignore[operator]
                    data["upstream_unrecovered"] += layer.nack.given_up  # type: ignore[operator]
        data["udp_packets_in"] = self.mux.packets_in
        data["udp_bytes_in"] = self.mux.bytes_in
        data["udp_packets_out"] = self.mux.packets_out
        data["udp_bytes_out"] = self.mux.bytes_out
        data["native_send_path"] = 1 if self.mux.send_path == "native" else 0
        outbox = self.mux.outbox
        data["udp_gso"] = 1 if self.mux.gso_active else 0
        data["udp_gso_messages"] = outbox.gso_messages if outbox is not None else 0
        data["udp_gso_datagrams"] = outbox.gso_datagrams if outbox is not None else 0
        data["rooms"] = len(self.routers)
        data["tracks"] = sum(len(r.tracks) for r in self.routers.values())
        return data
