"""DtlsSession: a real client and server pumped in memory, in simulated time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from media.transport.certificate import Certificate
from media.transport.dtls import (
    INITIAL_RTO_MS,
    MAX_RETRANSMITS,
    MAX_RTO_MS,
    TIMER_SLACK_MS,
    DtlsSession,
    split_records,
)
from media.transport.srtp import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80,
    SrtpContext,
)

# Generating keys is the slow part: share them across tests.
CLIENT_CERT = Certificate.generate()
SERVER_CERT = Certificate.generate()
OTHER_CERT = Certificate.generate()

# drop(sender_role, index of datagram sent by that role) -> True to lose it
DropFn = Callable[[str, int], bool]


def pair(
    *,
    client_profiles: tuple[str, ...] | None = None,
    server_profiles: tuple[str, ...] | None = None,
    client_sees: Certificate = SERVER_CERT,
    server_sees: Certificate | None = CLIENT_CERT,
) -> tuple[DtlsSession, DtlsSession]:
    ckw = {"srtp_profiles": client_profiles} if client_profiles else {}
    skw = {"srtp_profiles": server_profiles} if server_profiles else {}
    client = DtlsSession(
        CLIENT_CERT, role="client", remote_fingerprints=client_sees.fingerprints(), **ckw
    )
    server = DtlsSession(
        SERVER_CERT,
        role="server",
        remote_fingerprints=[("sha-256", server_sees.fingerprint())] if server_sees else [],
        **skw,
    )
    return client, server


def pump(
    client: DtlsSession,
    server: DtlsSession,
    *,
    drop: DropFn = lambda role, i: False,
    now: float = 0.0,
    max_steps: int = 200,
) -> float:
    """Exchange datagrams until quiet, stepping the clock to the next deadline; returns now."""
    sent = {"client": 0, "server": 0}
    client.start(now)
    server.start(now)
    for _ in range(max_steps):
        moved = False
        for src, dst, role in ((client, server, "client"), (server, client, "server")):
            for datagram in src.datagrams_to_send():
                moved = True
                index = sent[role]
                sent[role] += 1
                if not drop(role, index):
                    dst.feed(datagram, now)
        if moved:
            continue
        deadlines = [d for d in (client.next_deadline(), server.next_deadline()) if d is not None]
        if not deadlines:
            return now
        now = min(deadlines)
        client.on_timer(now)
        server.on_timer(now)
    raise AssertionError("pump did not settle")


def test_handshake_connects_and_keys_cross_match() -> None:
    client, server = pair()
    now = pump(client, server)
    assert now == 0.0  # no loss, no timer needed
    assert client.state == server.state == "connected"
    assert client.failure_reason is None and server.failure_reason is None
    c_profile, c_local, c_remote = client.srtp_keys()
    s_profile, s_local, s_remote = server.srtp_keys()
    assert c_profile == s_profile == SRTP_AEAD_AES_128_GCM  # preferred when both offer it
    assert c_local == s_remote and c_remote == s_local
    assert c_local != c_remote and len(c_local) == 28
    assert client.next_deadline() is None and server.next_deadline() is None

    # The keys drive SrtpContext directly, in both directions.
    c_srtp, s_srtp = SrtpContext(*client.srtp_keys()), SrtpContext(*server.srtp_keys())
    rtp = bytes.fromhex("80600001000000640000abcd") + b"payload"
    assert s_srtp.unprotect(c_srtp.protect(rtp)) == rtp
    assert c_srtp.unprotect(s_srtp.protect(rtp)) == rtp


def test_datagrams_respect_mtu() -> None:
    client, server = pair()
    sizes: list[int] = []
    client.start(0.0)
    server.start(0.0)
    for _ in range(6):
        for src, dst in ((client, server), (server, client)):
            for d in src.datagrams_to_send():
                sizes.append(len(d))
                assert split_records(d) is not None  # whole records only
                dst.feed(d, 0.0)
    assert client.state == "connected"
    assert sizes and max(sizes) <= 1200


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "expected"),
    [
        ((SRTP_AES128_CM_SHA1_80,), None, SRTP_AES128_CM_SHA1_80),
        (None, (SRTP_AES128_CM_SHA1_80,), SRTP_AES128_CM_SHA1_80),
        ((SRTP_AES128_CM_SHA1_80, SRTP_AEAD_AES_128_GCM), None, SRTP_AEAD_AES_128_GCM),
    ],
)
def test_profile_negotiation(
    client_profiles: tuple[str, ...] | None,
    server_profiles: tuple[str, ...] | None,
    expected: str,
) -> None:
    client, server = pair(client_profiles=client_profiles, server_profiles=server_profiles)
    pump(client, server)
    assert client.srtp_keys()[0] == server.srtp_keys()[0] == expected
    assert len(client.srtp_keys()[1]) == (30 if expected == SRTP_AES128_CM_SHA1_80 else 28)


@pytest.mark.parametrize(
    ("lost", "description"),
    [
        (("client", 0), "ClientHello"),
        (("server", 0), "server's first flight"),
        (("client", 1), "client's key exchange flight"),
        (("server", 1), "server's final flight"),
    ],
)
def test_lost_flight_is_recovered_by_retransmission(
    lost: tuple[str, int], description: str
) -> None:
    client, server = pair()
    now = pump(client, server, drop=lambda role, i: (role, i) == lost)
    assert client.state == server.state == "connected", description
    assert now == INITIAL_RTO_MS + TIMER_SLACK_MS  # one initial RTO
    assert client.retransmissions + server.retransmissions >= 1
    assert client.srtp_keys()[1] == server.srtp_keys()[2]


def test_repeated_loss_backs_off_exponentially() -> None:
    client, server = pair()
    now = pump(client, server, drop=lambda role, i: role == "client" and i < 3)
    assert client.state == server.state == "connected"
    assert now == sum(INITIAL_RTO_MS * 2**k + TIMER_SLACK_MS for k in range(3))


def test_handshake_times_out_when_peer_is_silent() -> None:
    client, server = pair()
    now = pump(client, server, drop=lambda role, i: role == "client")
    assert client.state == "failed"
    assert "timed out" in (client.failure_reason or "")
    assert client.retransmissions == MAX_RETRANSMITS
    rtos = [min(INITIAL_RTO_MS * 2**k, MAX_RTO_MS) for k in range(MAX_RETRANSMITS + 1)]
    assert now == sum(rtos) + TIMER_SLACK_MS * len(rtos)
    assert client.next_deadline() is None


def test_server_rejects_client_with_wrong_fingerprint() -> None:
    client, server = pair(server_sees=OTHER_CERT)
    pump(client, server)
    assert server.state == "failed"
    assert "fingerprint mismatch" in (server.failure_reason or "")
    assert OTHER_CERT.fingerprint() in (server.failure_reason or "")
    assert client.state == "failed"  # it got the alert
    with pytest.raises(RuntimeError):
        server.srtp_keys()


def test_client_rejects_server_with_wrong_fingerprint() -> None:
    client, server = pair(client_sees=OTHER_CERT)
    pump(client, server)
    assert client.state == "failed"
    assert "fingerprint mismatch" in (client.failure_reason or "")
    assert server.state != "connected"


def test_any_supported_algorithm_is_accepted() -> None:
    client, server = pair()
    server.set_remote_fingerprints(
        [("sha-1", "00:11"), ("SHA-512", CLIENT_CERT.fingerprint("sha-512").lower())]
    )
    pump(client, server)
    assert server.state == "connected"


def test_no_supported_algorithm_fails_clearly() -> None:
    client, server = pair()
    server.set_remote_fingerprints([("md5", "00:11")])
    pump(client, server)
    assert server.state == "failed"
    assert "no supported fingerprint algorithm" in (server.failure_reason or "")


@pytest.mark.parametrize("matches", [True, False])
def test_fingerprint_arriving_after_handshake(matches: bool) -> None:
    # A subscriber's SDP answer (with its fingerprint) may race its ClientHello.
    client, server = pair(server_sees=None)
    pump(client, server)
    assert server.state == "connecting"
    with pytest.raises(RuntimeError):
        server.srtp_keys()
    cert = CLIENT_CERT if matches else OTHER_CERT
    server.set_remote_fingerprints([("sha-256", cert.fingerprint())])
    assert server.state == ("connected" if matches else "failed")
    if matches:
        assert server.srtp_keys()[2] == client.srtp_keys()[1]
    else:
        assert "fingerprint mismatch" in (server.failure_reason or "")


def test_garbage_is_counted_and_ignored() -> None:
    client, server = pair()
    client.start(0.0)
    server.start(0.0)
    for junk in (
        b"",
        b"\x16",
        b"\x16\xfe\xfd" + bytes(5),
        b"\x80" * 40,
        b"\x17\xfe\xfd" + bytes(8) + b"\xff\xff",
    ):
        server.feed(junk, 0.0)
    assert server.bad_records == 5
    pump(client, server)
    assert client.state == server.state == "connected"
    # A well-framed record with a garbage body after the handshake is dropped too.
    server.feed(b"\x17\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x04junk", 0.0)
    assert server.state == "connected"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    server = DtlsSession(
        SERVER_CERT, role="server", remote_fingerprints=[("sha-256", CLIENT_CERT.fingerprint())]
    )
    server.feed(data, 0.0)
    server.feed(b"\x16\xfe\xfd" + data, 0.0)
    server.on_timer(5000.0)
    server.datagrams_to_send()
    assert server.state in ("new", "connecting", "failed")


def test_app_data_is_discarded_and_counted() -> None:
    client, server = pair()
    pump(client, server)
    client._conn.send(b"sctp!")  # what a data channel would send
    client._drain()
    for d in client.datagrams_to_send():
        server.feed(d, 0.0)
    assert server.app_data_discarded == 5
    assert server.state == "connected"


def test_close_notifies_peer_and_is_idempotent() -> None:
    client, server = pair()
    pump(client, server)
    server.close()
    server.close()
    assert server.state == "closed"
    out = server.datagrams_to_send()
    assert len(out) == 1
    client.feed(out[0], 0.0)
    assert client.state == "closed"
    server.feed(b"\x15\xfe\xfd" + bytes(10), 0.0)  # ignored once closed
    assert server.datagrams_to_send() == []


def test_close_before_start() -> None:
    _, server = pair()
    server.close()
    assert server.state == "closed" and server.datagrams_to_send() == []


def test_bad_role_rejected() -> None:
    with pytest.raises(ValueError):
        DtlsSession(SERVER_CERT, role="controller", remote_fingerprints=[])  # type: ignore[arg-type]


def test_interop_with_aiortc_dtls_client() -> None:
    # aiortc's own context (it offers AES-256-GCM first): our server keeps its preference.
    from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate

    aiortc_cert = RTCCertificate.generateCertificate()
    conn = SSL.Connection(aiortc_cert._create_ssl_context(srtp_profiles=SRTP_PROFILES), None)
    conn.set_connect_state()
    fingerprints = [(f.algorithm, f.value) for f in aiortc_cert.getFingerprints()]
    server = DtlsSession(SERVER_CERT, role="server", remote_fingerprints=fingerprints)
    server.start(0.0)
    done = False
    for _ in range(10):
        try:
            conn.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        while True:
            try:
                server.feed(conn.bio_read(1500), 0.0)
            except SSL.WantReadError:
                break
        for d in server.datagrams_to_send():
            conn.bio_write(d)
        if done and server.state == "connected":
            break
    assert server.state == "connected"
    profile, local, remote = server.srtp_keys()
    assert profile == SRTP_AEAD_AES_128_GCM == conn.get_selected_srtp_profile().decode()
    material = conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 56)
    assert remote == material[:16] + material[32:44]  # the client's key + salt
    assert local == material[16:32] + material[44:56]
