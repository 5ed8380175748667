"""The lite client: one participant on Ferry's own cores, for load and scenario tests.

Signaling is :class:`ClientSession`'s, as for :class:`FerryClient`; media goes through
a :class:`LitePublisher` and a :class:`LiteSubscriber` (see ``clients.lite``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from media.ortc import SessionDescription
from media.transport.certificate import Certificate
from signaling import sdp
from signaling.sdp import build_publisher_offer, build_subscriber_answer

from ..channel import ConnectTimeout, FerryError
from ..session import ClientSession
from .live import LiveVp8Source
from .publisher import AudioStream, LitePublisher, VideoLayer
from .subscriber import LiteSubscriber, RecvCounters
from .transport import CandidateRewrite, shared_certificate

__all__ = ["LiteClient"]

logger = logging.getLogger("ferry.lite_client")

EVENT_LOG_LIMIT = 5000


def _normalize_layers(
    frames_per_layer: Sequence[Sequence[bytes] | LiveVp8Source] | Sequence[bytes],
    simulcast_rids: Sequence[str] | None,
) -> tuple[list[list[bytes] | LiveVp8Source], list[str] | None]:
    """(frames per layer, rids or None): a flat list of frames is one plain layer."""
    if not frames_per_layer:
        raise ValueError("no video frames")
    if isinstance(frames_per_layer[0], (bytes, bytearray, memoryview)):
        return [[bytes(f) for f in frames_per_layer]], None  # type: ignore[union-attr]
    layers: list[list[bytes] | LiveVp8Source] = [
        layer if isinstance(layer, LiveVp8Source) else list(layer)  # type: ignore[arg-type]
        for layer in frames_per_layer
    ]
    if len(layers) == 1:
        return layers, None
    if not simulcast_rids:
        raise ValueError("several layers need simulcast_rids")
    if len(simulcast_rids) < len(layers):
        raise ValueError(f"{len(layers)} layers but only rids {list(simulcast_rids)}")
    return layers, list(simulcast_rids[: len(layers)])


class LiteClient(ClientSession):
    """One participant: signaling WebSocket plus a lite publisher and/or subscriber PC.

    Signaling is :class:`ClientSession`'s, as for :class:`FerryClient`. Public state,
    besides the session's (``server_info``, ``room``, ``participant``, ``published``):

    * ``events``: recent server events (a bounded deque);
    * ``publisher`` / ``subscriber``: the transports once created;
    * ``received``: SSRC -> :class:`RecvCounters` of the subscriber PC;
    * :meth:`stats` for a JSON-friendly summary.
    """

    poll_interval = 0.02

    def __init__(
        self,
        *,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        nack: bool = True,
        twcc: bool = True,
        certificate: Certificate | None = None,
        name: str = "lite",
        candidate_rewrite: CandidateRewrite | None = None,
    ) -> None:
        """``nack``/``twcc`` choose the subscriber's feedback (both on, like a browser).

        ``candidate_rewrite`` maps Ferry's UDP candidate to the address both transports
        send to (a proxy in front of Ferry, say); by default they send to Ferry itself.
        """
        super().__init__(
            name=name, request_timeout=request_timeout, connect_timeout=connect_timeout
        )
        self.nack = nack
        self.twcc = twcc
        self.certificate = certificate or shared_certificate()
        self.candidate_rewrite = candidate_rewrite
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_LOG_LIMIT)
        self.on_event: list[Callable[[dict[str, Any]], None]] = []
        self.publisher: LitePublisher | None = None
        self.subscriber: LiteSubscriber | None = None
        self._starter: asyncio.Future[None] | None = None

    # -- signaling -----------------------------------------------------------------------
    def _dispatch(self, msg: dict[str, Any]) -> None:
        """An event from the server (replies are matched by the channel)."""
        self.events.append(msg)
        self._queue_offer(msg)
        if msg.get("type") == "publisher_layers" and self.publisher is not None:
            self.publisher.set_layers(dict(msg.get("layers") or {}))
        for callback in list(self.on_event):
            try:
                callback(msg)
            except Exception:
                logger.exception("%s: event callback failed", self.name)

    # -- publishing ----------------------------------------------------------------------
    async def publish_vp8(
        self,
        frames_per_layer: Sequence[Sequence[bytes] | LiveVp8Source] | Sequence[bytes],
        *,
        fps: int = 30,
        simulcast_rids: Sequence[str] | None = ("q", "h", "f"),
        audio: Sequence[bytes] | None = None,
        wait_connected: bool = True,
    ) -> list[dict[str, Any]]:
        """Offer VP8 (1..3 layers, ascending quality) and optional Opus, connect, start pacing.

        ``frames_per_layer`` is either one clip (a list of VP8 frames: no simulcast) or
        one clip per layer, low to high, sent with ``simulcast_rids``; a layer can also
        be a :class:`LiveVp8Source` (encoded live, each frame stamped with its capture
        time for glass-to-glass latency). Returns the
        publish reply's TrackInfo list. Raises :class:`ConnectTimeout` if ICE/DTLS does
        not come up within ``connect_timeout``.
        """
        if self.publisher is not None:
            raise FerryError("conflict", "this LiteClient already publishes")
        clips, rids = _normalize_layers(frames_per_layer, simulcast_rids)
        layers = [VideoLayer(rids[i] if rids else None, clip) for i, clip in enumerate(clips)]
        stream = AudioStream(audio) if audio else None
        pub = LitePublisher(
            self.certificate,
            layers,
            stream,
            fps=fps,
            simulcast=bool(rids),
            name=f"{self.name}/pub",
            candidate_rewrite=self.candidate_rewrite,
        )
        self.publisher = pub
        stream_id, audio_id, video_id = (secrets.token_hex(8) for _ in range(3))
        offer = build_publisher_offer(
            ufrag=pub.ufrag,
            pwd=pub.pwd,
            fingerprint=pub.fingerprint,
            port=pub.port,
            audio_ssrc=stream.ssrc if stream else None,
            video_ssrcs=[(layer.ssrc, layer.rtx_ssrc) for layer in layers],
            rids=rids,
            stream_id=stream_id,
            audio_track_id=audio_id,
            video_track_id=video_id,
            cname=pub.cname,
        )
        tracks = {video_id: {"source": "camera"}}
        if stream is not None:
            tracks[audio_id] = {"source": "microphone"}
        reply = await self.request("publish", sdp=offer, tracks=tracks)
        answer = sdp.parse(reply["sdp"], "answer")
        self._check_publisher_answer(answer, audio=stream is not None)
        pub.set_mids("0" if stream else None, "1" if stream else "0")
        pub.set_remote(answer.transport)
        pub.start(self.connect_timeout)
        self.published = list(reply.get("tracks") or [])
        if wait_connected:
            await pub.wait_connected(self.connect_timeout + 1.0)
            pub.start_media()
        else:
            self._starter = asyncio.ensure_future(self._start_when_connected(pub))
        return self.published

    async def publish_audio(self, audio: Sequence[bytes], *, wait_connected: bool = True) -> list[dict[str, Any]]:
        """Offer Opus alone (a microphone without a camera), connect, start pacing.

        Returns the publish reply's TrackInfo list; a refused offer (``forbidden``)
        leaves this client free to publish again.
        """
        if self.publisher is not None:
            raise FerryError("conflict", "this LiteClient already publishes")
        stream = AudioStream(audio)
        pub = LitePublisher(
            self.certificate, [], stream, fps=50, simulcast=False, name=f"{self.name}/pub",
            candidate_rewrite=self.candidate_rewrite,
        )
        stream_id, audio_id = secrets.token_hex(8), secrets.token_hex(8)
        offer = build_publisher_offer(
            ufrag=pub.ufrag, pwd=pub.pwd, fingerprint=pub.fingerprint, port=pub.port, audio_ssrc=stream.ssrc,
            video_ssrcs=None, rids=None, stream_id=stream_id, audio_track_id=audio_id, video_track_id="",
            cname=pub.cname,
        )
        try:
            reply = await self.request("publish", sdp=offer, tracks={audio_id: {"source": "microphone"}})
        except BaseException:
            pub.close()
            raise
        self.publisher = pub
        answer = sdp.parse(reply["sdp"], "answer")
        if not any(m.kind == "audio" and not m.rejected for m in answer.media):
            raise FerryError("rejected", "Ferry did not accept Opus")
        pub.set_mids("0", None)
        pub.set_remote(answer.transport)
        pub.start(self.connect_timeout)
        self.published = list(reply.get("tracks") or [])
        if wait_connected:
            await pub.wait_connected(self.connect_timeout + 1.0)
            pub.start_media()
        else:
            self._starter = asyncio.ensure_future(self._start_when_connected(pub))
        return self.published

    async def _start_when_connected(self, pub: LitePublisher) -> None:
        with contextlib.suppress(FerryError):
            await pub.wait_connected(self.connect_timeout + 1.0)
            pub.start_media()

    @staticmethod
    def _check_publisher_answer(answer: SessionDescription, *, audio: bool) -> None:
        video = [m for m in answer.media if m.kind == "video" and not m.rejected]
        if not video or not any(c.name.upper() == "VP8" for c in video[0].codecs):
            raise FerryError("rejected", "Ferry did not accept VP8")
        if audio and not any(m.kind == "audio" and not m.rejected for m in answer.media):
            raise FerryError("rejected", "Ferry did not accept Opus")

    # -- subscribing ---------------------------------------------------------------------
    async def _answer_offer(self, event: dict[str, Any]) -> None:
        offer = sdp.parse(event["sdp"], "offer")
        if self.subscriber is None:
            self.subscriber = LiteSubscriber(
                self.certificate,
                nack=self.nack,
                twcc=self.twcc,
                name=f"{self.name}/sub",
                candidate_rewrite=self.candidate_rewrite,
            )
        sub = self.subscriber
        sub.apply_offer(offer)
        text = build_subscriber_answer(
            offer, ufrag=sub.ufrag, pwd=sub.pwd, fingerprint=sub.fingerprint, twcc=self.twcc
        )
        await self.request("subscriber_answer", sdp=text, version=event.get("version"))
        self.subscriber_version = event.get("version")
        if any(not m.rejected for m in offer.media):
            sub.set_remote(offer.transport)
            sub.start(self.connect_timeout)

    @property
    def received(self) -> dict[int, RecvCounters]:
        """Subscriber counters by primary SSRC (empty before the first offer)."""
        return self.subscriber.received if self.subscriber is not None else {}

    async def wait_connected(self, which: str = "publisher", timeout: float | None = None) -> None:
        """Wait (bounded) until the publisher/subscriber transport is connected."""
        t = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        while True:
            transport = self.publisher if which == "publisher" else self.subscriber
            if transport is not None:
                await transport.wait_connected(max(0.01, deadline - time.monotonic()))
                return
            if time.monotonic() >= deadline:
                raise ConnectTimeout("connect_timeout", f"no {which} transport after {t}s")
            await asyncio.sleep(0.02)

    def stats(self) -> dict[str, Any]:
        """JSON-friendly counters of both PCs plus subscriber totals."""
        totals = {
            "packets": 0,
            "bytes": 0,
            "expected": 0,
            "lost": 0,
            "recovered": 0,
            "keyframes": 0,
        }
        for c in self.received.values():
            totals["packets"] += c.packets
            totals["bytes"] += c.bytes
            totals["expected"] += c.expected
            totals["lost"] += c.lost
            totals["recovered"] += c.recovered
            totals["keyframes"] += c.keyframes
        return {
            "publisher": self.publisher.summary() if self.publisher else None,
            "subscriber": self.subscriber.summary() if self.subscriber else None,
            "received_totals": totals,
        }

    # -- teardown ------------------------------------------------------------------------
    async def _close_media(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
        for transport in (self.publisher, self.subscriber):
            if transport is not None:
                transport.close()
