"""The media socket's two send paths put the same bytes on the wire in the same order.

The native path (C extension: libsrtp protect into the socket's outbox, sendmmsg and
UDP GSO runs per peer) and the Python path (protect, then sendto per datagram) are
driven through real loopback sockets with the same SRTP keys; SRTP is deterministic for
a key, SSRC and index, so the datagrams a receiver gets must be byte for byte equal,
transport-wide seq stamped in the copy that is encrypted. Each peer gets its datagrams
in order whether its runs leave by GSO, one by one, or one by one after the kernel
refused GSO. Also: what an RTX cache holds follows its max age, and RED history
kept without building RED payloads is the history encoding leaves.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator

import pytest

from media.audio.red_encoder import RedEncoder
from media.rtp.rtx import RtxCache
from media.transport import udp_mux
from media.transport.srtp import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80, SrtpContext
from media.transport.udp_mux import UdpMux
from media.wire.rtp import build_rtp

KEYS = {SRTP_AEAD_AES_128_GCM: bytes(range(28)), SRTP_AES128_CM_SHA1_80: bytes(range(30))}
TWCC_AT = 17


def _packets() -> list[bytes]:
    out = []
    for i in range(150):  # > one sendmmsg batch of 64
        out.append(
            build_rtp(
                payload_type=96,
                seq=65500 + i,  # wraps: the rollover counter is libsrtp's on both paths
                timestamp=3000 * i,
                ssrc=0x1234,
                payload=bytes([i & 0xFF]) * (50 + 7 * i),
                extensions=[(5, b"\x00\x00")],
            )
        )
    return out


def _peer() -> socket.socket:
    """A non-blocking loopback receiver with room for a whole fan-out."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    return peer


class _Transportish:
    """What WebRtcTransport.send_rtp does, on a bare mux and SRTP context."""

    def __init__(self, mux: UdpMux, srtp: SrtpContext, addr: tuple[str, int]) -> None:
        self.mux, self.srtp, self.addr = mux, srtp, addr

    def send_rtp(self, packet: bytes, seq_at: int = 0, seq: int = 0) -> None:
        if self.mux.holding and self.srtp.native_tx:
            self.mux.queue(packet, self.addr[0], self.addr[1], self.srtp.native_tx, seq_at, seq)
            return
        self.mux.sendto(self.srtp.protect(packet, seq_at, seq), self.addr)


async def _send_all(path: str, profile: str) -> list[bytes]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2.0)
    mux = UdpMux("127.0.0.1", 0, send_path=path)
    mux.open()
    try:
        key = KEYS[profile]
        t = _Transportish(mux, SrtpContext(profile, key, key), receiver.getsockname())
        opened = mux.open_batch()
        assert opened == (path == "native")
        for i, packet in enumerate(_packets()):
            t.send_rtp(packet, TWCC_AT if i % 3 else 0, 40000 + i)
            if i % 10 == 9:
                mux.sendto(b"\x80\xc8not-rtp-just-bytes-%d" % i, receiver.getsockname())
        mux.flush()
        assert not mux.holding
        got = [receiver.recv(4096) for _ in range(150 + 15)]
        assert mux.packets_out == 165
        return got
    finally:
        mux.close()
        receiver.close()


@pytest.mark.parametrize("profile", [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80])
async def test_native_and_python_paths_send_identical_datagrams(profile: str) -> None:
    if not udp_mux.native_available():
        pytest.skip("native send path not built (python setup.py build_ext --inplace)")
    python = await _send_all("python", profile)
    native = await _send_all("native", profile)
    assert len(native) == len(python) == 165
    assert native == python
    # And the receiver can read them: the stamped transport-wide seq is inside.
    key = KEYS[profile]
    rx = SrtpContext(profile, key, key)
    plain = [rx.unprotect(d) for d in native if d[1] != 0xC8]
    assert plain[1][TWCC_AT : TWCC_AT + 2] == (40001).to_bytes(2, "big")
    assert plain[0][TWCC_AT : TWCC_AT + 2] == b"\x00\x00"  # not stamped: seq_at 0


async def test_python_path_sends_at_once_and_batches_nothing() -> None:
    mux = UdpMux("127.0.0.1", 0, send_path="python")
    mux.open()
    try:
        assert mux.open_batch() is False and not mux.holding and mux.outbox is None
    finally:
        mux.close()


def test_native_path_refused_when_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp_mux, "_fastpath", None)
    assert udp_mux.native_available() is False
    with pytest.raises(ValueError, match="not built"):
        UdpMux("127.0.0.1", 0, send_path="native")


def test_send_path_env_forces_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_NATIVE_SEND", "0")
    assert udp_mux._choose_send_path() == "python"
    monkeypatch.setenv("FERRY_NATIVE_SEND", "1")
    assert udp_mux._choose_send_path() == ("native" if udp_mux.native_available() else "python")


def test_gso_env_keeps_the_native_path_off_gso(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_GSO", "0")
    assert udp_mux._gso_wanted() is False
    assert UdpMux("127.0.0.1", 0, send_path="python").gso is False
    monkeypatch.setenv("FERRY_GSO", "1")
    assert udp_mux._gso_wanted() is True


def test_rtx_cache_lets_go_of_packets_older_than_its_max_age() -> None:
    cache = RtxCache(1024, max_age_ms=1000.0)
    for i in range(300):  # 100 packets/s for 3 s
        cache.put(i, b"p%d" % i, i * 10.0)
    held = [p for p in cache._packets if p is not None]
    assert 95 <= len(held) <= 102  # one second's worth, not 300
    now = 2990.0
    assert cache.get(299, now) == b"p299"
    assert cache.get(200, now) == b"p200"  # 990 ms old: still there
    assert cache.get(150, now) is None  # 1.5 s old: gone (and get refused it before)


def test_rtx_cache_keeps_a_late_packet_filling_a_gap() -> None:
    cache = RtxCache(64, max_age_ms=1000.0)
    for seq in (1, 2, 4, 5):
        cache.put(seq, b"%d" % seq, 100.0 + seq)
    cache.put(3, b"3", 200.0)  # the repaired packet, forwarded late
    cache.put(6, b"6", 300.0)
    assert [cache.get(s, 310.0) for s in range(1, 7)] == [b"1", b"2", b"3", b"4", b"5", b"6"]


def test_red_history_kept_plain_is_the_history_encoding_leaves() -> None:
    built, plain = RedEncoder(2, 111), RedEncoder(2, 111)
    frames = [(960 * i, os.urandom(40 + i)) for i in range(6)]
    for ts, data in frames[:4]:
        built.encode(ts, data)
        plain.remember(ts, data)
    ts, data = frames[4]
    assert plain.encode(ts, data) == built.encode(ts, data)


def test_red_at_a_shorter_distance_from_a_longer_history_is_that_distances_red() -> None:
    """One distance-2 history serves a subscriber whose redundancy moves between 0, 1
    and 2 packet by packet: asked for distance 1 (or 0) it builds what an encoder of
    that distance would."""
    longer, one = RedEncoder(2, 111), RedEncoder(1, 111)
    frames = [(960 * i, os.urandom(40 + i)) for i in range(8)]
    for ts, data in frames[:3]:
        longer.remember(ts, memoryview(data))  # the forward path hands payload views
        one.remember(ts, data)
    for ts, data in frames[3:6]:
        assert longer.encode(ts, data, 1) == one.encode(ts, data)
    ts, data = frames[6]
    plain = RedEncoder(2, 111).encode(ts, data, 0)
    assert plain == RedEncoder(1, 111).encode(ts, data)  # no blocks: the frame alone
    full = RedEncoder(2, 111)
    for ts, data in frames[4:6]:
        full.remember(ts, data)
    assert longer.encode(*frames[6], 2) == full.encode(*frames[6])


@contextlib.contextmanager
def _native_mux(**kwargs: object) -> Iterator[UdpMux]:
    """An open mux on the native send path (the test skips where it is not built)."""
    if not udp_mux.native_available():
        pytest.skip("native send path not built")
    mux = UdpMux("127.0.0.1", 0, send_path="native", **kwargs)  # type: ignore[arg-type]
    mux.open()
    try:
        yield mux
    finally:
        mux.close()


async def test_a_held_outbox_sends_once_its_cap_of_datagrams_wait() -> None:
    """The first peers of a big fan-out get their copies while the rest are built:
    a held outbox sends once HOLD_CAP datagrams wait, the remainder at the flush."""
    with _native_mux() as mux, contextlib.closing(_peer()) as receiver:
        assert mux.open_batch()
        cap = udp_mux.HOLD_CAP
        for i in range(cap + 3):
            mux.sendto(b"x%d" % i, receiver.getsockname())
            if i == cap - 1:
                # Sent before the flush: readable now, in order.
                got = [receiver.recv(64) for _ in range(cap)]
                assert got == [b"x%d" % k for k in range(cap)]
                with pytest.raises(BlockingIOError):
                    receiver.recv(64)
        assert mux.outbox.pending == 3
        mux.flush()
        assert mux.packets_out == cap + 3 and mux.outbox.pending == 0
        assert [receiver.recv(64) for _ in range(3)] == [b"x%d" % k for k in range(cap, cap + 3)]


def _fan_out_like(mux: UdpMux, peers: list[socket.socket]) -> dict[int, list[bytes]]:
    """What a drain of a keyframe, an audio packet and a delta frame fans out: for
    each packet, one datagram per peer (sizes as a packetizer makes them: equal, the
    last of a frame shorter). Returns what each peer should get, in order."""
    sizes = [1100] * 9 + [700] + [120] + [1100, 1100, 400] + [1100] * 70  # > 64 segments
    want: dict[int, list[bytes]] = {k: [] for k in range(len(peers))}
    for i, size in enumerate(sizes):
        for k, peer in enumerate(peers):
            data = bytes([k, i & 0xFF]) + bytes([(i * 7 + k) & 0xFF]) * (size - 2)
            mux.sendto(data, peer.getsockname())
            want[k].append(data)
    return want


@pytest.mark.parametrize("gso", [True, False])
async def test_each_peer_gets_its_datagrams_in_order_whether_runs_leave_by_gso_or_not(gso: bool) -> None:
    with _native_mux() as mux, contextlib.ExitStack() as stack:
        peers = [stack.enter_context(contextlib.closing(_peer())) for _ in range(3)]
        if gso and not mux.gso_active:
            pytest.skip("this kernel has no UDP GSO")
        mux.outbox.gso = gso
        assert mux.open_batch()
        want = _fan_out_like(mux, peers)
        mux.flush()
        total = sum(len(v) for v in want.values())
        assert mux.packets_out == total and not mux.drops
        for k, peer in enumerate(peers):
            assert [peer.recv(2048) for _ in want[k]] == want[k]
            with pytest.raises(BlockingIOError):
                peer.recv(2048)
        if gso:
            # Per peer: 9 x 1100 + 700 | 120 | 1100, 1100, 400 | 64 x 1100 | 6 x 1100.
            assert mux.outbox.gso_messages == 3 * 4
            assert mux.outbox.gso_datagrams == 3 * (10 + 3 + 70)
            assert mux.send_path_label == "native, UDP GSO"
        else:
            assert mux.outbox.gso_messages == 0 and mux.send_path_label == "native"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_kernel_refusing_gso_gets_every_datagram_sent_one_by_one() -> None:
    """A socket without UDP checksums makes the kernel refuse GSO (EINVAL): the refused
    run still leaves, datagram by datagram, GSO stays off and the log says why once."""
    with _native_mux() as mux, contextlib.closing(_peer()) as peer:
        # On the mux's own logger at its own level: whatever level the root logger has.
        records, level = _Records(), udp_mux.log.level
        udp_mux.log.addHandler(records)
        udp_mux.log.setLevel(logging.WARNING)
        try:
            assert mux._sock is not None
            if not mux.gso_active:
                pytest.skip("this kernel has no UDP GSO")
            mux._sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
            for _ in range(2):
                assert mux.open_batch()
                want = _fan_out_like(mux, [peer])[0]
                mux.flush()
                assert [peer.recv(2048) for _ in want] == want
            assert mux.packets_out == 2 * len(want) and not mux.drops
            assert mux.outbox.gso_refused == errno.EINVAL and mux.outbox.gso_messages == 0
            assert not mux.gso_active and mux.send_path_label == "native"
            refused = [m for m in records.messages if "refused UDP GSO" in m]
            assert len(refused) == 1 and "EINVAL" in refused[0]
        finally:
            udp_mux.log.removeHandler(records)
            udp_mux.log.setLevel(level)


async def test_flush_counts_a_full_send_buffer_as_a_drop() -> None:
    with _native_mux(rcvbuf=4096) as mux:
        mux.open_batch()
        for _ in range(2000):
            mux.sendto(bytes(1200), ("127.0.0.1", 9))  # discard port: nobody reads
        mux.flush()
        sent = mux.packets_out
        full = mux.drops["send_buffer_full"]
        assert sent + full + mux.drops["send_error"] == 2000


async def test_a_kernel_without_udp_gso_never_gets_a_gso_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where UDP_SEGMENT is unknown the kernel would ignore the control message and send
    a run as one jumbo datagram: the outbox starts with GSO off and runs leave singly."""
    monkeypatch.setattr(udp_mux, "UDP_SEGMENT", 0x7FFF)  # an option no kernel knows
    with _native_mux() as mux, contextlib.closing(_peer()) as peer:
        assert not mux.gso and not mux.gso_active
        assert mux.open_batch()
        want = _fan_out_like(mux, [peer])[0]
        mux.flush()
        assert [peer.recv(4096) for _ in want] == want
        assert mux.outbox.gso_messages == 0 and mux.outbox.gso_refused == 0


async def test_a_big_room_raises_the_held_outbox_cap_so_each_peer_still_gets_runs() -> None:
    with _native_mux() as mux:
        assert mux.outbox.cap == udp_mux.HOLD_CAP
        mux.fit_fan_out(80)
        assert mux.outbox.cap == udp_mux.HOLD_CAP  # 80 peers x 4 packets fit already
        mux.fit_fan_out(500)
        assert mux.outbox.cap == 500 * udp_mux.PACKETS_PER_RUN
        mux.fit_fan_out(100_000)
        assert mux.outbox.cap == udp_mux.MAX_HOLD_CAP
