"""SrtpContext: round trips, authentication, replay, for every profile."""

from __future__ import annotations

import struct

import pytest

from media.transport.srtp import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AEAD_AES_256_GCM,
    SRTP_AES128_CM_SHA1_80,
    SrtpContext,
    SrtpError,
    SrtpReplayError,
    key_salt_length,
)

PROFILES = [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80, SRTP_AEAD_AES_256_GCM]
# bytes added to RTP / RTCP (RTCP adds the 4-byte SRTCP index too)
OVERHEAD = {SRTP_AEAD_AES_128_GCM: 16, SRTP_AEAD_AES_256_GCM: 16, SRTP_AES128_CM_SHA1_80: 10}


def keys(profile: str, seed: int) -> bytes:
    # Deterministic, distinct key material per (profile, seed).
    return bytes((seed * 31 + i) % 256 for i in range(key_salt_length(profile)))


def contexts(profile: str) -> tuple[SrtpContext, SrtpContext]:
    a, b = keys(profile, 1), keys(profile, 2)
    return SrtpContext(profile, a, b), SrtpContext(profile, b, a)


def rtp(seq: int, ssrc: int = 0x1234ABCD, payload: bytes = b"\x10" * 100) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + payload


def rtcp_rr(ssrc: int = 0x1234ABCD) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)  # receiver report, no blocks


@pytest.mark.parametrize("profile", PROFILES)
def test_rtp_round_trip_both_ways(profile: str) -> None:
    alice, bob = contexts(profile)
    for seq in range(5):
        pkt = rtp(seq)
        protected = alice.protect(pkt)
        assert len(protected) == len(pkt) + OVERHEAD[profile]
        assert protected[:12] == pkt[:12]  # header stays in the clear
        assert protected[12:] != pkt[12:]
        assert bob.unprotect(protected) == pkt
        assert alice.unprotect(bob.protect(pkt)) == pkt


@pytest.mark.parametrize("profile", PROFILES)
def test_rtcp_round_trip(profile: str) -> None:
    alice, bob = contexts(profile)
    for _ in range(3):
        pkt = rtcp_rr()
        protected = alice.protect_rtcp(pkt)
        assert len(protected) == len(pkt) + 4 + OVERHEAD[profile]
        assert bob.unprotect_rtcp(protected) == pkt


def test_unknown_inbound_ssrcs_are_accepted() -> None:
    alice, bob = contexts(SRTP_AEAD_AES_128_GCM)
    for ssrc in (1, 2, 0xFFFFFFFF):  # simulcast layers learned from RTP
        assert bob.unprotect(alice.protect(rtp(7, ssrc=ssrc))) == rtp(7, ssrc=ssrc)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("where", [0, 1, 12, -1])
def test_tampered_packet_is_rejected(profile: str, where: int) -> None:
    alice, bob = contexts(profile)
    protected = bytearray(alice.protect(rtp(1)))
    protected[where] ^= 0x01
    with pytest.raises(SrtpError) as info:
        bob.unprotect(bytes(protected))
    assert not isinstance(info.value, SrtpReplayError)  # counted as srtp_auth, not a replay
    tampered_rtcp = bytearray(alice.protect_rtcp(rtcp_rr()))
    tampered_rtcp[-1 if where == 0 else where] ^= 0x01
    with pytest.raises(SrtpError) as info:
        bob.unprotect_rtcp(bytes(tampered_rtcp))
    assert not isinstance(info.value, SrtpReplayError)


def test_wrong_key_is_rejected() -> None:
    alice, _ = contexts(SRTP_AEAD_AES_128_GCM)
    stranger = SrtpContext(
        SRTP_AEAD_AES_128_GCM, keys(SRTP_AEAD_AES_128_GCM, 3), keys(SRTP_AEAD_AES_128_GCM, 4)
    )
    with pytest.raises(SrtpError, match="unprotect"):
        stranger.unprotect(alice.protect(rtp(1)))


@pytest.mark.parametrize("profile", PROFILES)
def test_replay_is_rejected_but_reordering_is_not(profile: str) -> None:
    alice, bob = contexts(profile)
    packets = [alice.protect(rtp(seq)) for seq in range(600)]
    bob.unprotect(packets[599])
    # Late packets within the 1024-packet window still pass (NACK repairs arrive late).
    assert bob.unprotect(packets[0]) == rtp(0)
    assert bob.unprotect(packets[300]) == rtp(300)
    for replayed in (packets[599], packets[0], packets[300]):
        with pytest.raises(SrtpReplayError):
            bob.unprotect(replayed)
    bob.unprotect(alice.protect(rtp(1700)))
    with pytest.raises(SrtpReplayError):  # never seen, but behind the window
        bob.unprotect(packets[100])
    rtcp = alice.protect_rtcp(rtcp_rr())
    bob.unprotect_rtcp(rtcp)
    with pytest.raises(SrtpReplayError):
        bob.unprotect_rtcp(rtcp)


@pytest.mark.parametrize("profile", PROFILES)
def test_retransmission_of_same_packet_is_allowed_on_tx(profile: str) -> None:
    alice, bob = contexts(profile)
    first = alice.protect(rtp(42))
    again = alice.protect(rtp(42))  # answering a NACK without RTX
    assert again == first
    assert bob.unprotect(again) == rtp(42)


@pytest.mark.parametrize(
    "data", [b"", b"\x80", b"\x80" * 11, b"\x80\x60" + bytes(10), b"\x80\xc9\x00\x01"]
)
def test_malformed_input_raises_srtp_error(data: bytes) -> None:
    _, bob = contexts(SRTP_AES128_CM_SHA1_80)
    with pytest.raises(SrtpError):
        bob.unprotect(data)
    with pytest.raises(SrtpError):
        bob.unprotect_rtcp(data)
    assert issubclass(SrtpError, ValueError)


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="allowed"):
        SrtpContext("SRTP_NULL", b"", b"")
    with pytest.raises(ValueError, match="needs 28 bytes"):
        SrtpContext(SRTP_AEAD_AES_128_GCM, bytes(30), bytes(28))
