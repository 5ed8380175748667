"""The Python client's video receive path: a missing packet is asked for again, and one
that is not coming ends in a keyframe.

Driven packet by packet with a fake clock; frames are one or two packets of VP8 (or
H.264) data as aiortc depayloads them.
"""

from __future__ import annotations

import time
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from clients import nack_repeat, video_jitter
from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack
from clients.nack_repeat import RepeatingNackGenerator
from clients.video_jitter import GIVE_UP_MS, RecoveringJitterBuffer, install, is_keyframe_data

KEY = bytes([0x10, 0x02, 0x00]) + b"\x9d\x01\x2a" + bytes(20)  # VP8 frame tag, keyframe
DELTA = bytes([0x11, 0x02, 0x00]) + bytes(20)  # VP8 frame tag, interframe
TICKS = 6000  # 15 fps at 90 kHz


class Clock:
    def __init__(self) -> None:
        self.s = 0.0

    def __call__(self) -> float:
        return self.s


def packet(seq: int, frame: int, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=(frame * TICKS) & 0xFFFFFFFF)
    p._data = data  # type: ignore[attr-defined]  # what aiortc's depayload leaves
    return p


class Stream:
    """Frames of two packets each, 66 ms apart on the fake clock; ``drop`` seqs never
    arrive; every frame ``key_every`` is a keyframe."""

    def __init__(self, buffer: RecoveringJitterBuffer, clock: Clock, key_every: int = 1000) -> None:
        self.buffer, self.clock, self.key_every = buffer, clock, key_every
        self.seq = 1000
        self.frame = 0
        self.out: list[int] = []  # frame numbers handed to the decoder
        self.plis: list[float] = []

    def send_frame(self, drop: tuple[int, ...] = (), key: bool | None = None) -> list[int]:
        """One frame's packets; returns their seqs."""
        key = self.frame % self.key_every == 0 if key is None else key
        seqs = []
        for part in range(2):
            seqs.append(self.seq)
            if self.seq not in drop:
                self.deliver(packet(self.seq, self.frame, (KEY if key else DELTA) if part == 0 else bytes(30)))
            self.seq += 1
        self.frame += 1
        self.clock.s += 1 / 15
        return seqs

    def deliver(self, p: RtpPacket) -> None:
        pli, frame = self.buffer.add(p)
        if pli:
            self.plis.append(round(self.clock.s, 3))
        if frame is not None:
            self.out.append(frame.timestamp // TICKS)


def make(**options: float) -> tuple[RecoveringJitterBuffer, Clock]:
    clock = Clock()
    return RecoveringJitterBuffer(clock=clock, **options), clock


def test_a_retransmission_within_the_wait_fills_the_hole_and_every_frame_comes_out_in_order() -> None:
    buffer, clock = make()
    s = Stream(buffer, clock)
    s.send_frame()
    (_, lost) = s.send_frame(drop=(1003,))
    for _ in range(5):
        s.send_frame()
    assert s.out == [0]  # frame 1 misses a packet: everything after it waits
    s.deliver(packet(lost, 1, DELTA))  # the retransmission
    for _ in range(6):
        s.send_frame()
    assert s.out == list(range(12)) and s.plis == [] and buffer.gave_up == 0


def test_a_packet_that_never_comes_is_given_up_after_the_wait_and_a_keyframe_asked_for() -> None:
    buffer, clock = make(give_up_ms=1000.0)
    s = Stream(buffer, clock)
    s.send_frame()
    s.send_frame(drop=(1003,))
    while clock.s < 1.0:  # frame 0 came out at 0.067 s: frame 1 is held from then
        s.send_frame()
    assert s.out == [0] and not s.plis and buffer.gave_up == 0
    s.send_frame()
    s.send_frame()  # past 1 s behind the hole: give up, no keyframe held, so ask for one
    assert buffer.gave_up == 1 and buffer.awaiting_keyframe
    asked_at = s.plis[0]
    for _ in range(3):
        s.send_frame()  # delta frames: they reference what was lost
    assert s.out == [0]
    s.send_frame(key=True)
    s.send_frame()
    s.send_frame()
    assert s.out[1:] == [s.frame - 3, s.frame - 2]  # the keyframe, then what follows it
    assert not buffer.awaiting_keyframe and buffer.dropped_frames == 3  # the delta frames
    assert s.plis == [asked_at]


def test_a_keyframe_after_a_hole_is_started_from_at_once_without_asking() -> None:
    buffer, clock = make(give_up_ms=1000.0)
    s = Stream(buffer, clock, key_every=10)
    s.send_frame()
    s.send_frame(drop=(1003,))
    for _ in range(9):
        s.send_frame()  # frames 2-9 wait behind the hole; frame 10 is a keyframe
    assert s.out == [0] and buffer.skipped_to_keyframe == 1
    s.send_frame()
    assert s.out == [0, 10] and s.plis == [] and buffer.gave_up == 0
    assert clock.s < 1.0


def test_while_no_keyframe_comes_it_is_asked_for_again() -> None:
    buffer, clock = make(give_up_ms=500.0, pli_interval_ms=500.0)
    s = Stream(buffer, clock)
    s.send_frame()
    s.send_frame(drop=(1003,))
    while clock.s < 2.5:
        s.send_frame()
    assert len(s.plis) == 4  # at the give-up (~0.6 s), then every 500 ms
    assert all(0.45 <= b - a <= 0.55 for a, b in zip(s.plis, s.plis[1:], strict=False))
    assert s.out == [0] and buffer.dropped_frames > 0


def test_a_hole_older_than_the_nack_history_is_given_up_at_once() -> None:
    """aiortc's NACK generator forgets a missing packet 128 packets later: nothing will
    ask for it again, so waiting out the rest of the second only freezes the video."""
    buffer, clock = make(give_up_ms=10_000.0)
    s = Stream(buffer, clock)
    s.send_frame()
    s.send_frame(drop=(1003,))
    clock.s = 0.0  # no time passes: only the packet count can end the wait
    for _ in range(63):  # frame 1's missing packet is 127 behind the newest
        s.send_frame()
        clock.s = 0.0
    assert buffer.gave_up == 0
    s.send_frame()  # 128
    assert buffer.gave_up == 1 and s.plis


def test_a_late_retransmission_after_giving_up_is_ignored() -> None:
    buffer, clock = make(give_up_ms=300.0)
    s = Stream(buffer, clock)
    s.send_frame()
    (_, lost) = s.send_frame(drop=(1003,))
    while buffer.gave_up == 0:
        s.send_frame()
    s.deliver(packet(lost, 1, DELTA))
    s.send_frame(key=True)
    s.send_frame()
    assert s.out == [0, s.frame - 2]


def test_keyframes_are_told_from_delta_frames_in_vp8_and_h264() -> None:
    assert is_keyframe_data(KEY) and not is_keyframe_data(DELTA)
    assert not is_keyframe_data(b"") and not is_keyframe_data(bytes([0x10, 0, 0]) + bytes(10))
    sps, idr, p_slice = b"\x00\x00\x00\x01\x67abc", b"\x00\x00\x00\x01\x65abc", b"\x00\x00\x00\x01\x41abc"
    assert is_keyframe_data(sps + idr) and is_keyframe_data(idr) and not is_keyframe_data(p_slice)
    assert not is_keyframe_data(b"\x00\x00\x00\x01")


async def test_install_gives_a_video_receiver_the_buffer_and_leaves_audio_alone() -> None:
    pc = RTCPeerConnection()
    try:
        video = pc.addTransceiver("video", direction="recvonly").receiver
        audio = pc.addTransceiver("audio", direction="recvonly").receiver
        buffer = install(video)
        assert isinstance(buffer, RecoveringJitterBuffer)
        assert install(video) is buffer  # once
        assert install(audio) is None
        assert type(audio._RTCRtpReceiver__jitter_buffer) is JitterBuffer  # type: ignore[attr-defined]
        assert video_jitter.buffer_of(video) is buffer and video_jitter.buffer_of(audio) is None
    finally:
        await pc.close()


def nack_packet(seq: int) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, ssrc=1234)


def test_a_missing_packet_is_asked_for_again_each_interval_until_it_comes() -> None:
    """aiortc NACKs only when a new gap appears; the repeat asks on its own clock."""
    clock = Clock()
    gen = RepeatingNackGenerator(clock=clock)
    gen.add(nack_packet(10))
    assert gen.add(nack_packet(12))  # 11 missing: aiortc NACKs it now
    assert gen.due(0.1) == [] and gen.ssrc == 1234
    clock.s = 0.05
    gen.add(nack_packet(13))
    assert gen.due(0.1) == []  # asked 50 ms ago
    clock.s = 0.1
    assert gen.due(0.1) == [11]
    assert gen.due(0.1) == []  # just asked
    clock.s = 0.15
    assert gen.add(nack_packet(16))  # 14, 15 missing: aiortc NACKs all three now
    clock.s = 0.22
    assert gen.due(0.1) == []
    clock.s = 0.26
    assert gen.due(0.1) == [11, 14, 15]
    gen.add(nack_packet(11))  # the retransmission
    clock.s = 0.37
    assert gen.due(0.1) == [14, 15] and gen.repeated == 6
    gen.forget_before(15)  # the jitter buffer gave up on 14
    clock.s = 0.5
    assert gen.due(0.1) == [15] and gen.missing == {15}


async def test_install_gives_a_video_receiver_the_repeating_nack_generator() -> None:
    pc = RTCPeerConnection()
    try:
        video = pc.addTransceiver("video", direction="recvonly").receiver
        audio = pc.addTransceiver("audio", direction="recvonly").receiver
        gen = nack_repeat.install(video)
        assert isinstance(gen, RepeatingNackGenerator) and nack_repeat.install(video) is gen
        assert nack_repeat.install(audio) is None
    finally:
        await pc.close()


# --------------------------------------------------------------------------- live
# An aiortc publisher and an aiortc viewer through Ferry on 127.0.0.1. One video packet
# never reaches the viewer's receiver: its first copy and the first ``rtx_drops`` of its
# retransmissions are dropped at the receiver's entry (None: all of them). Nothing else
# is lost, so aiortc alone (NACKs only on a new gap, frames held until 512 newer
# packets) would freeze for seconds either way.


class PacketThief:
    """Drops the ``nth`` video packet of one receiver and retransmissions of it."""

    def __init__(self, receiver: Any, nth: int, rtx_drops: int | None) -> None:
        self.nth, self.rtx_drops = nth, rtx_drops
        self.media_pt: int | None = None
        self.count = 0
        self.target: int | None = None
        self.dropped_at: float | None = None
        self.rtx_dropped = 0
        self.rtx_passed = 0
        handle = receiver._handle_rtp_packet

        async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            if not self._drop(packet):
                await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle_rtp

    def _drop(self, packet: RtpPacket) -> bool:
        if self.media_pt is None:
            self.media_pt = packet.payload_type
        if packet.payload_type == self.media_pt:
            self.count += 1
            if self.count == self.nth:
                self.target, self.dropped_at = packet.sequence_number, time.monotonic()
                return True
            return False
        if self.target is None or int.from_bytes(packet.payload[:2], "big") != self.target:
            return False
        if self.rtx_drops is None or self.rtx_dropped < self.rtx_drops:
            self.rtx_dropped += 1
            return True
        self.rtx_passed += 1
        return False


async def _video_through_a_thief(server: Any, room: str, rtx_drops: int | None) -> tuple[float, PacketThief, dict]:
    """The longest gap between the viewer's decoded frames from just before the drop to
    the first frame 4 s after it."""
    pub, viewer = FerryClient(connect_timeout=15.0), FerryClient(connect_timeout=15.0)
    try:
        for client, who in ((pub, "pub"), (viewer, "viewer")):
            await client.connect(server.ws_url)
            await client.join(server.token(room, who))
        await pub.publish(TestPatternVideoTrack(fps=20))
        sid = pub.participant["sid"]
        await viewer.wait_for(lambda: viewer.sink_for(sid, "video") is not None, timeout=10)
        (tr,) = [t for t in viewer.subscriber.getTransceivers() if t.kind == "video"]
        thief = PacketThief(tr.receiver, nth=150, rtx_drops=rtx_drops)
        sink = viewer.sink_for(sid, "video")
        frames: list[float] = []
        sink.on_frame = lambda _frame: frames.append(time.monotonic())
        await viewer.wait_for(lambda: thief.dropped_at is not None, timeout=20, message="no 150th packet")
        assert thief.dropped_at is not None
        end = thief.dropped_at + 4.0
        await viewer.wait_for(lambda: frames and frames[-1] >= end, timeout=15, message="video stopped")
        after = next(i for i, t in enumerate(frames) if t >= end)  # the first frame past the window
        window = [t for t in frames[: after + 1] if t >= thief.dropped_at - 0.5]
        gap = max(b - a for a, b in zip(window, window[1:], strict=False))
        stats = (await viewer.stats())["subscriber"]["tracks"]
        (video,) = [v for v in stats.values() if v["kind"] == "video"]
        keys = ("nacksRepeated", "holesGivenUp", "holesSkippedToKeyframe", "framesDroppedAfterLoss")
        print(f"CLIENT_RECOVERY {room} longest gap {gap:.3f} s", {k: video[k] for k in keys})
        return gap, thief, video
    finally:
        await viewer.close()
        await pub.close()


async def test_a_lost_retransmission_is_asked_for_again_and_the_video_barely_pauses(server: Any) -> None:
    with allow_loopback():
        gap, thief, video = await _video_through_a_thief(server, "renack", rtx_drops=1)
    assert gap < 0.5, (gap, video)
    assert thief.rtx_dropped == 1 and thief.rtx_passed >= 1, vars(thief)
    assert video["nacksRepeated"] >= 1 and video["holesGivenUp"] == 0, video


async def test_a_packet_that_never_comes_ends_in_a_keyframe_within_about_a_second(server: Any) -> None:
    with allow_loopback():
        gap, thief, video = await _video_through_a_thief(server, "giveup", rtx_drops=None)
    assert gap < GIVE_UP_MS / 1000 + 0.6, (gap, video)
    assert thief.rtx_dropped >= 2 and thief.rtx_passed == 0, vars(thief)
    assert video["holesGivenUp"] == 1, video
