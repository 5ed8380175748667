"""WebRtcTransport behind the shared mux: who gets bound, and what SRTP drops count as.

Driven through `UdpMux.dispatch` with an in-memory engine (tests/fuzz/harness.py), so
every datagram takes the socket's path without a socket.
"""

from __future__ import annotations

import pytest
from aioice import stun

from media.transport.dtls import DtlsSession
from media.transport.webrtc_transport import LINK_OUT_HOLD_MS
from media.wire.rtp import build_rtp

from .fuzz.harness import CLIENT_CERT, PUBLISHER_ADDR, Call, ClientPeer, Stack, binding_request

ATTACKER = ("127.0.0.1", 45555)


@pytest.mark.parametrize(
    ("remote_ufrag", "pwd", "code"),
    [
        ("brws", "not-the-password-at-all!", 401),  # right ufrag pair, wrong MESSAGE-INTEGRITY
        ("evil", None, 400),  # a remote ufrag other than the one in the SDP
    ],
)
def test_failed_stun_check_does_not_bind_the_sender(remote_ufrag: str, pwd: str | None, code: int) -> None:
    stack = Stack()
    mux = stack.mux
    transport = stack.engine.create_transport(name="victim")
    transport.set_remote(CLIENT_CERT.fingerprints(), "brws")
    now = stack.engine.clock_ms

    forged = binding_request(transport.ice_ufrag, remote_ufrag, pwd or transport.ice_pwd)
    mux.dispatch(forged, ATTACKER, now)
    [reply] = mux.take(ATTACKER)
    answer = stun.parse_message(reply)
    assert answer.message_class == stun.Class.ERROR and answer.attributes["ERROR-CODE"][0] == code
    assert transport.remote_addr is None

    # The attacker's ClientHello is not routed to the victim's DTLS session.
    attacker_dtls = DtlsSession(CLIENT_CERT, role="client", remote_fingerprints=[])
    attacker_dtls.start(now)
    for datagram in attacker_dtls.datagrams_to_send():
        mux.dispatch(datagram, ATTACKER, now)
    assert mux.drops["unknown_address"] >= 1
    assert transport.dtls.state == "new"
    assert mux.take(ATTACKER) == []

    # The real peer still connects, on its own address.
    peer = ClientPeer(mux, PUBLISHER_ADDR)
    peer.connect(transport, now)
    assert transport.state == "connected" and transport.remote_addr == PUBLISHER_ADDR


def test_authenticated_check_binds_the_sender() -> None:
    stack = Stack()
    transport = stack.engine.create_transport(name="t")
    transport.set_remote(CLIENT_CERT.fingerprints(), "brws")
    stack.mux.dispatch(binding_request(transport.ice_ufrag, "brws", transport.ice_pwd), PUBLISHER_ADDR, 0.0)
    assert transport.remote_addr == PUBLISHER_ADDR and transport.state == "connecting"


def test_binding_responses_on_the_selected_path_wait_for_the_link_while_it_is_out() -> None:
    """Answered during an outage, a check's response waits in the bottleneck and the
    peer reads the outage as its round-trip time; unanswered, it is a lost check."""
    stack = Stack()
    transport = stack.engine.create_transport(name="t")
    transport.set_remote(CLIENT_CERT.fingerprints(), "brws")
    check = binding_request(transport.ice_ufrag, "brws", transport.ice_pwd)
    stack.mux.dispatch(check, PUBLISHER_ADDR, 0.0)
    assert len(stack.mux.take(PUBLISHER_ADDR)) == 1

    transport.set_link_out(True, 1000.0)
    stack.mux.dispatch(check, PUBLISHER_ADDR, 1500.0)
    assert stack.mux.take(PUBLISHER_ADDR) == []
    assert transport.drops["stun_response_link_out"] == 1
    # a check on another path is answered: it may be the way around the outage
    probe = binding_request(transport.ice_ufrag, "brws", transport.ice_pwd, use_candidate=False)
    stack.mux.dispatch(probe, ATTACKER, 1600.0)
    assert len(stack.mux.take(ATTACKER)) == 1 and transport.remote_addr == PUBLISHER_ADDR
    # an outage that lasts past the hold: the peer's consent is not put at risk
    stack.mux.dispatch(check, PUBLISHER_ADDR, 1000.0 + LINK_OUT_HOLD_MS)
    assert len(stack.mux.take(PUBLISHER_ADDR)) == 1

    transport.set_link_out(True, 9000.0)
    transport.set_link_out(False, 9100.0)
    stack.mux.dispatch(check, PUBLISHER_ADDR, 9200.0)
    assert len(stack.mux.take(PUBLISHER_ADDR)) == 1
    assert transport.drops["stun_response_link_out"] == 1


def _rtp(seq: int, ssrc: int = 0x1111) -> bytes:
    return build_rtp(payload_type=111, seq=seq, timestamp=seq * 960, ssrc=ssrc, payload=b"\xfc" + bytes(40))


def test_srtp_replays_and_auth_failures_are_counted_apart() -> None:
    call = Call()
    mux, srtp, now = call.stack.mux, call.publisher.srtp, call.stack.engine.clock_ms
    assert srtp is not None
    drops = call.pub_transport.drops

    packet = srtp.protect(_rtp(100))
    mux.dispatch(packet, PUBLISHER_ADDR, now)
    mux.dispatch(packet, PUBLISHER_ADDR, now)  # replayed
    assert (drops["srtp_replay"], drops["srtp_auth"]) == (1, 0)

    forged = bytearray(srtp.protect(_rtp(101)))
    forged[-1] ^= 0x01  # tag no longer matches
    mux.dispatch(bytes(forged), PUBLISHER_ADDR, now)
    assert (drops["srtp_replay"], drops["srtp_auth"]) == (1, 1)

    rtcp = srtp.protect_rtcp(bytes.fromhex("80c9000100001111"))  # empty receiver report
    mux.dispatch(rtcp, PUBLISHER_ADDR, now)
    mux.dispatch(rtcp, PUBLISHER_ADDR, now)
    assert (drops["srtp_replay"], drops["srtp_auth"]) == (2, 1)
    snapshot = call.stack.engine.snapshot()["drops"]
    assert snapshot["srtp_replay"] == 2 and snapshot["srtp_auth"] == 1
