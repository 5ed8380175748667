"""Token minting/verification with explicit time (no clock reads, no sleeps)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.auth import (
    AuthError,
    Claims,
    Grants,
    TokenVerifier,
    check_join,
    generate_dev_keys,
    mint_token,
)

KEY = "APItest"
SECRET = "s" * 64
NOW = 1_700_000_000.0


def _mint(**kw: object) -> str:
    args: dict[str, object] = {"identity": "alice", "room": "demo", "now": NOW}
    args.update(kw)
    return mint_token(KEY, SECRET, **args)  # type: ignore[arg-type]


def _verifier() -> TokenVerifier:
    return TokenVerifier({KEY: SECRET, "APIother": "o" * 40})


def test_round_trip_defaults() -> None:
    claims = _verifier().verify(_mint(name="Alice"), now=NOW + 1)
    assert claims == Claims(
        identity="alice",
        name="Alice",
        grants=Grants(
            room="demo",
            room_join=True,
            can_publish=True,
            can_subscribe=True,
            can_publish_data=True,
        ),
        expires_at=NOW + 6 * 3600,
        issuer=KEY,
    )


def test_round_trip_flags_and_default_name() -> None:
    token = _mint(
        can_publish=False,
        can_subscribe=False,
        can_publish_data=False,
        room_admin=True,
        room_record=True,
        hidden=True,
        ttl_s=60,
    )
    claims = _verifier().verify(token, now=NOW)
    assert claims.name == "alice"
    assert claims.expires_at == NOW + 60
    g = claims.grants
    assert (g.can_publish, g.can_subscribe, g.can_publish_data) == (False, False, False)
    assert (g.room_admin, g.room_record, g.hidden) == (True, True, True)


def test_claim_layout_matches_protocol_doc() -> None:
    payload = jwt.decode(_mint(), SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload["iss"] == KEY
    assert payload["sub"] == "alice"
    assert payload["name"] == "alice"
    assert payload["exp"] == int(NOW + 6 * 3600)
    assert payload["video"] == {
        "room": "demo",
        "roomJoin": True,
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "roomAdmin": False,
        "roomRecord": False,
        "hidden": False,
    }


def test_second_key_selected_by_iss() -> None:
    token = mint_token("APIother", "o" * 40, identity="bob", room="r", now=NOW)
    assert _verifier().verify(token, now=NOW).issuer == "APIother"


def _err(token: str, now: float = NOW) -> AuthError:
    with pytest.raises(AuthError) as info:
        _verifier().verify(token, now=now)
    assert info.value.code == "unauthorized"
    return info.value


def test_expired() -> None:
    token = _mint(ttl_s=60)
    _verifier().verify(token, now=NOW + 60 + 5)  # inside the 10 s leeway
    assert "expired" in _err(token, now=NOW + 60 + 11).message


def test_not_yet_valid() -> None:
    assert "not valid yet" in _err(_mint(), now=NOW - 3600).message


def test_wrong_secret() -> None:
    token = mint_token(KEY, "x" * 40, identity="a", room="r", now=NOW)
    assert "signature" in _err(token).message


def test_unknown_key() -> None:
    token = mint_token("APInope", SECRET, identity="a", room="r", now=NOW)
    assert "unknown api key" in _err(token).message


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "....", "eyJ.eyJ.xx"])
def test_garbage(token: str) -> None:
    assert "malformed" in _err(token).message


def _forge(payload: dict[str, object], alg: str = "HS256") -> str:
    return jwt.encode(payload, SECRET, algorithm=alg)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"sub": "a", "exp": NOW + 60}, "'iss'"),
        ({"iss": KEY, "exp": NOW + 60}, "'sub'"),
        ({"iss": KEY, "sub": "a"}, "'exp'"),
        ({"iss": KEY, "sub": "a", "exp": "soon"}, "exp"),
        ({"iss": KEY, "sub": "a", "exp": NOW + 60, "video": []}, "'video'"),
        ({"iss": KEY, "sub": "a", "exp": NOW + 60, "video": {"room": 3}}, "video.room"),
        (
            {"iss": KEY, "sub": "a", "exp": NOW + 60, "video": {"canPublish": "yes"}},
            "video.canPublish",
        ),
        ({"iss": KEY, "sub": "a", "exp": NOW + 60, "name": 5}, "'name'"),
        ({"iss": KEY, "sub": "a", "exp": NOW + 60, "nbf": "x"}, "nbf"),
    ],
)
def test_malformed_claims(payload: dict[str, object], fragment: str) -> None:
    assert fragment in _err(_forge(payload)).message


def test_other_algorithm_refused() -> None:
    token = _forge({"iss": KEY, "sub": "a", "exp": NOW + 60}, alg="HS512")
    assert "HS256" in _err(token).message


def test_alg_none_refused() -> None:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(
        json.dumps({"iss": KEY, "sub": "a", "exp": NOW + 60}).encode()
    ).rstrip(b"=")
    _err(f"{header.decode()}.{body.decode()}.")


def test_missing_video_grant_means_no_rights() -> None:
    claims = _verifier().verify(_forge({"iss": KEY, "sub": "a", "exp": NOW + 60}), now=NOW)
    assert claims.grants == Grants()
    with pytest.raises(AuthError) as info:
        check_join(claims, "demo")
    assert info.value.code == "forbidden"
    assert "roomJoin" in info.value.message


def test_check_join() -> None:
    claims = _verifier().verify(_mint(room="demo"), now=NOW)
    check_join(claims, "demo")
    with pytest.raises(AuthError) as info:
        check_join(claims, "other")
    assert info.value.code == "forbidden"
    assert "'demo'" in info.value.message and "'other'" in info.value.message


def test_check_join_any_room_when_unnamed() -> None:
    check_join(_verifier().verify(_mint(room=None), now=NOW), "anything")


def test_mint_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        _mint(identity="")
    with pytest.raises(ValueError):
        _mint(ttl_s=0)


def test_generate_dev_keys() -> None:
    key, secret = generate_dev_keys()
    assert key.startswith("APIdev")
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) >= 32
    assert generate_dev_keys() != (key, secret)
    token = mint_token(key, secret, identity="a", room="r", now=NOW)
    assert TokenVerifier({key: secret}).verify(token, now=NOW).identity == "a"


_segment = st.one_of(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=40
    ),
    st.builds(
        lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode(),
        st.one_of(
            st.dictionaries(
                st.sampled_from(["alg", "typ", "kid", "iss", "sub", "exp", "nbf", "video", "name"]),
                st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
            ),
            st.lists(st.integers(), max_size=3),
        ),
    ),
)


@given(st.one_of(st.text(max_size=200), st.lists(_segment, min_size=1, max_size=4).map(".".join)))
@settings(max_examples=400, deadline=None)
def test_verify_only_raises_auth_error(token: str) -> None:
    try:
        _verifier().verify(token, now=NOW)
    except AuthError as exc:
        assert exc.code == "unauthorized"
