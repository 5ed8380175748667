"""IceLiteAgent: binding requests built with aioice's stun module, in simulated time."""

from __future__ import annotations

import string

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from media.transport.ice_lite import IceLiteAgent, generate_credentials, stun_local_ufrag

LOCAL_UFRAG, LOCAL_PWD = "ferryufr", "ferrypasswordferrypasswo"
REMOTE_UFRAG = "brws"
ADDR_A = ("127.0.0.1", 50000)
ADDR_B = ("127.0.0.1", 50002)


def request(
    *,
    username: str = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}",
    pwd: str = LOCAL_PWD,
    use_candidate: bool = False,
    fingerprint: bool = True,
) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLING"] = 0x1234567890ABCDEF
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    if not fingerprint:
        del msg.attributes["FINGERPRINT"]
    return bytes(msg)


def agent(**kwargs: float) -> IceLiteAgent:
    return IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD, **kwargs)


def test_valid_check_gets_signed_response_with_source_address() -> None:
    ice = agent()
    req = request()
    out = ice.handle(req, ADDR_A, 0.0)
    assert out is not None
    resp = stun.parse_message(out)  # also verifies FINGERPRINT
    assert resp.message_class == stun.Class.RESPONSE
    assert resp.transaction_id == stun.parse_message(req).transaction_id
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == ADDR_A
    assert "FINGERPRINT" in resp.attributes
    assert resp.check_message_integrity(LOCAL_PWD.encode())
    assert not resp.check_message_integrity(b"other password")
    assert ice.state(0.0) == "connected"
    assert ice.selected_addr == ADDR_A
    assert ice.remote_ufrag == REMOTE_UFRAG


def test_ipv6_source_address_is_mirrored() -> None:
    out = agent().handle(request(), ("::1", 6000), 0.0)
    assert out is not None
    assert stun.parse_message(out).attributes["XOR-MAPPED-ADDRESS"] == ("::1", 6000)


def test_bad_password_gets_401_and_no_consent() -> None:
    ice = agent()
    out = ice.handle(request(pwd="wrong password wrong pass"), ADDR_A, 0.0)
    assert out is not None
    resp = stun.parse_message(out)
    assert resp.message_class == stun.Class.ERROR
    assert resp.error_code == 401
    assert "MESSAGE-INTEGRITY" not in resp.attributes
    assert ice.auth_failures == 1
    assert ice.state(0.0) == "new"
    assert ice.selected_addr is None


@pytest.mark.parametrize(
    "username",
    [f"someone:{REMOTE_UFRAG}", LOCAL_UFRAG, f"{LOCAL_UFRAG}:", f":{REMOTE_UFRAG}"],
)
def test_wrong_ufrag_gets_400(username: str) -> None:
    ice = agent()
    out = ice.handle(request(username=username), ADDR_A, 0.0)
    assert out is not None
    assert stun.parse_message(out).error_code == 400
    assert ice.wrong_ufrag == 1
    assert ice.state(0.0) == "new"


def test_remote_ufrag_from_sdp_is_enforced() -> None:
    ice = agent()
    ice.remote_ufrag = "fromsdp"
    out = ice.handle(request(), ADDR_A, 0.0)
    assert out is not None and stun.parse_message(out).error_code == 400
    ok = ice.handle(request(username=f"{LOCAL_UFRAG}:fromsdp"), ADDR_A, 0.0)
    assert ok is not None and stun.parse_message(ok).message_class == stun.Class.RESPONSE


def test_missing_fingerprint_is_bad_request() -> None:
    ice = agent()
    out = ice.handle(request(fingerprint=False), ADDR_A, 0.0)
    assert out is not None and stun.parse_message(out).error_code == 400
    assert ice.bad_requests == 1


def test_indication_is_ignored_silently() -> None:
    ice = agent()
    ind = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION)
    ind.add_fingerprint()
    assert ice.handle(bytes(ind), ADDR_A, 0.0) is None
    assert ice.bad_requests == 0


def test_every_truncation_is_dropped_and_counted() -> None:
    ice = agent()
    req = request()
    for n in range(len(req)):
        assert ice.handle(req[:n], ADDR_A, 0.0) is None
    assert ice.bad_requests == len(req)
    assert ice.state(0.0) == "new"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    ice = agent()
    out = ice.handle(data, ADDR_A, 0.0)
    assert out is None or isinstance(out, bytes)
    assert ice.state(0.0) == "new"
    stun_local_ufrag(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_attributes_after_valid_header_never_raise(body: bytes) -> None:
    header = b"\x00\x01" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + b"t" * 12
    data = header + body
    agent().handle(data, ADDR_A, 0.0)
    ufrag = stun_local_ufrag(data)
    assert ufrag is None or isinstance(ufrag, str)


def test_stun_local_ufrag() -> None:
    assert stun_local_ufrag(request()) == LOCAL_UFRAG
    assert stun_local_ufrag(request(use_candidate=True)) == LOCAL_UFRAG
    assert stun_local_ufrag(request(username="nocolon")) is None
    resp = agent().handle(request(), ADDR_A, 0.0)
    assert resp is not None and stun_local_ufrag(resp) is None  # not a request
    assert stun_local_ufrag(b"\x80\x60" + bytes(30)) is None  # RTP
    assert stun_local_ufrag(b"\x16\xfe\xfd" + bytes(30)) is None  # DTLS
    assert stun_local_ufrag(request()[:-1]) is None


def test_use_candidate_selects_and_plain_checks_do_not_switch() -> None:
    ice = agent()
    ice.handle(request(), ADDR_A, 0.0)
    assert ice.selected_addr == ADDR_A  # first valid check selects
    ice.handle(request(), ADDR_B, 10.0)
    assert ice.selected_addr == ADDR_A
    ice.handle(request(use_candidate=True), ADDR_B, 20.0)
    assert ice.selected_addr == ADDR_B


# (now_ms, action, expected state, expected next_deadline)
CONSENT_ROWS: list[tuple[float, str, str, float | None]] = [
    (0.0, "check", "connected", 7500.0),
    (7499.0, "timer", "connected", 7500.0),
    (7500.0, "timer", "disconnected", 30000.0),  # a state changes at its deadline
    (10000.0, "check", "connected", 17500.0),
    (17500.0, "timer", "disconnected", 40000.0),
    (39999.0, "timer", "disconnected", 40000.0),
    (40000.0, "timer", "failed", None),
]


def test_consent_freshness_table() -> None:
    ice = agent()
    assert ice.state(0.0) == "new" and ice.next_deadline() is None
    for now, action, expected_state, expected_deadline in CONSENT_ROWS:
        if action == "check":
            assert ice.handle(request(), ADDR_A, now) is not None
        else:
            ice.on_timer(now)
        assert ice.state(now) == expected_state, now
        assert ice.next_deadline() == expected_deadline, now


def test_consent_is_tracked_per_address() -> None:
    ice = agent(consent_timeout_ms=1000.0, disconnected_after_ms=500.0)
    ice.handle(request(use_candidate=True), ADDR_A, 0.0)
    for t in range(0, 3000, 200):
        ice.handle(request(), ADDR_B, float(t))  # B stays alive, but A is selected
    assert ice.state(3000.0) == "failed"
    ice.handle(request(use_candidate=True), ADDR_B, 3000.0)
    assert ice.state(3000.0) == "connected"


def test_restart_keeps_path_until_new_credentials_are_used() -> None:
    ice = agent()
    ice.handle(request(use_candidate=True), ADDR_A, 0.0)
    new_ufrag, new_pwd = generate_credentials()
    ice.restart(new_ufrag, new_pwd, remote_ufrag="brw2")
    assert (ice.local_ufrag, ice.local_pwd, ice.remote_ufrag) == (new_ufrag, new_pwd, "brw2")
    assert ice.selected_addr == ADDR_A and ice.state(1000.0) == "connected"

    # The browser keeps checking with the old credentials until it has the new answer.
    old = ice.handle(request(), ADDR_A, 2000.0)
    assert old is not None and stun.parse_message(old).check_message_integrity(LOCAL_PWD.encode())

    new = ice.handle(
        request(username=f"{new_ufrag}:brw2", pwd=new_pwd, use_candidate=True), ADDR_B, 3000.0
    )
    assert new is not None
    resp = stun.parse_message(new)
    assert resp.message_class == stun.Class.RESPONSE
    assert resp.check_message_integrity(new_pwd.encode())
    assert ice.selected_addr == ADDR_B

    # Once the new credentials are in use, the old ones are gone.
    stale = ice.handle(request(), ADDR_A, 4000.0)
    assert stale is not None and stun.parse_message(stale).error_code == 400


def test_generate_credentials() -> None:
    ufrag, pwd = generate_credentials()
    allowed = set(string.ascii_letters + string.digits + "+/")
    assert len(ufrag) >= 8 and len(pwd) >= 24
    assert set(ufrag) <= allowed and set(pwd) <= allowed
    assert generate_credentials() != (ufrag, pwd)


def test_invalid_timeouts_rejected() -> None:
    with pytest.raises(ValueError):
        IceLiteAgent("abcd", "x" * 24, consent_timeout_ms=1000.0, disconnected_after_ms=2000.0)
