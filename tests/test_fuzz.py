"""Fuzzing every input surface in CI, and what fuzzing found.

The targets in tests/fuzz/targets.py (signaling JSON, publish SDP, STUN, RTP, RTCP,
TURN) run here with inputs drawn by hypothesis: which seed, and a list of mutation
operations as data, applied by the same operators as the long `python -m tests.fuzz`
runs. Each target keeps live state across examples (a connected call, a transport
awaiting ICE, a relay with an allocation), as in the CLI. A target raises on an
`internal` error, a crash, or a failed property (see each target's docstring).
Derandomized, with modest example counts so the module stays fast on 2 loaded cores.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.rtp.twcc import MAX_LOST_PER_ROUND, TwccFeedback, TwccRecorder
from media.wire.rtp import build_rtp
from signaling import sdp
from signaling.protocol import encode

from .fuzz import targets
from .fuzz.harness import Call, Stack, lite_offer
from .fuzz.mutate import (
    BYTE_OPS,
    JSON_ODDITIES,
    LINE_OPS,
    apply_byte_ops,
    apply_line_ops,
    mutate_json,
)

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_targets: dict[str, targets.Target] = {}


def target(name: str) -> targets.Target:
    """One live target per module run (building a call takes milliseconds, not µs)."""
    if name not in _targets:
        _targets[name] = targets.make(name, seed=1)
    return _targets[name]


@pytest.fixture(scope="module", autouse=True)
def _close_targets() -> Any:
    yield
    for t in _targets.values():
        t.close()
    _targets.clear()


def ops(n_ops: int, max_size: int = 6) -> st.SearchStrategy[list[tuple[int, int, int, int]]]:
    return st.lists(
        st.tuples(st.integers(0, n_ops - 1), st.integers(0, 4000), st.integers(0, 2**32 - 1), st.integers(0, 255)),
        min_size=1, max_size=max_size,
    )


def _mutated_seed(t: targets.Target, index: int, byte_ops: list) -> bytes:
    seeds = t.seeds
    return apply_byte_ops(seeds[index % len(seeds)], byte_ops, seeds)


# ------------------------------------------------------------------------- the targets


@settings(FUZZ, max_examples=300)
@given(st.integers(0, 3), st.integers(0, 100), st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=12),
       st.one_of(st.none(), ops(len(BYTE_OPS), 3)))
def test_fuzz_signaling_json_never_internal(which: int, index: int, bits: list[int], raw_ops: list | None) -> None:
    t = target("json")
    choices = iter(bits * 8)

    def draw_bits(n: int) -> int:
        return next(choices, 0) & ((1 << n) - 1)

    msg = t.seeds[index % len(t.seeds)]
    for _ in range(bits[0] % 4):
        msg = mutate_json(msg, draw_bits)
    frame: str | bytes = json.dumps(msg, allow_nan=True)
    if raw_ops is not None:
        frame = apply_byte_ops(frame.encode(), raw_ops)
    t.run((which, frame))


@settings(FUZZ, max_examples=200)
@given(st.integers(0, 100), ops(len(LINE_OPS), 5))
def test_fuzz_publish_sdp_never_internal(index: int, line_ops: list) -> None:
    t = target("sdp")
    seeds = t.seeds
    t.run(apply_line_ops(seeds[index % len(seeds)], line_ops, seeds))


@settings(FUZZ, max_examples=500)
@given(st.integers(0, 100), st.integers(0, 100), ops(len(BYTE_OPS)), st.booleans())
def test_fuzz_stun_never_binds_unauthenticated(which: int, index: int, byte_ops: list, resign: bool) -> None:
    t = target("stun")
    t.run((which, _mutated_seed(t, index, byte_ops), resign))


@settings(FUZZ, max_examples=500)
@given(st.integers(0, 100), ops(len(BYTE_OPS)), st.booleans(), st.integers(0, 29), st.booleans())
def test_fuzz_rtp_receive_path(index: int, byte_ops: list, via_srtp: bool, advance: int, renumber: bool) -> None:
    t = target("rtp")
    t.run((_mutated_seed(t, index, byte_ops), via_srtp, advance, renumber))


@settings(FUZZ, max_examples=500)
@given(st.integers(0, 100), ops(len(BYTE_OPS)), st.booleans(), st.booleans(), st.integers(0, 29), st.booleans())
def test_fuzz_rtcp_receive_path(
    index: int, byte_ops: list, from_viewer: bool, via_srtp: bool, advance: int, reframe: bool
) -> None:
    t = target("rtcp")
    t.run((_mutated_seed(t, index, byte_ops), from_viewer, via_srtp, advance, reframe))


@settings(FUZZ, max_examples=500)
@given(st.integers(0, 100), st.integers(0, 100), ops(len(BYTE_OPS)), st.booleans())
def test_fuzz_turn_relay(which: int, index: int, byte_ops: list, resign: bool) -> None:
    t = target("turn")
    t.run((which, _mutated_seed(t, index, byte_ops), resign))


def test_cli_reports_cases_and_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    from .fuzz.__main__ import main

    assert main(["stun", "--cases", "200", "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "stun" and report["cases"] == 200 and report["crashes"] == 0
    assert report["cases_per_s"] > 0


def test_json_oddities_are_json() -> None:
    # Every replacement value the JSON mutator uses must survive json.dumps.
    json.dumps(list(JSON_ODDITIES), allow_nan=True)


# ------------------------------------------------------------------ what fuzzing found


def _publisher() -> tuple[Stack, Any]:
    stack = Stack()
    conn = stack.session()
    conn.join("r", "pub")
    return stack, conn


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: s.replace("a=group:BUNDLE 0 1\r\n", ""), "BUNDLE"),
        (lambda s: s.replace("a=setup:actpass", "a=setup:passive"), "setup:passive"),
        (lambda s: s.replace("a=fingerprint:", "a=x-fingerprint:"), "fingerprint"),
        (lambda s: s.replace("v=0", "v=1", 1), "version"),
    ],
)
def test_unacceptable_publish_offer_is_bad_request_with_reason(edit: Any, reason: str) -> None:
    stack, conn = _publisher()
    reply = conn.call("publish", sdp=edit(lite_offer()))
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request" and reason in reply["error"]["message"]
    assert stack.internal_errors == 0
    assert conn.call("publish", sdp=lite_offer())["ok"]  # the session still works


def test_rtp_with_a_truncated_extension_element_is_a_counted_drop() -> None:
    call = Call()
    listener = call.pub_transport.listener
    assert listener is not None
    ids = call.ext_ids
    packet = bytearray(build_rtp(payload_type=111, seq=5, timestamp=960, ssrc=0x1111, payload=b"\xfc" + bytes(20),
                                 extensions=[(ids[targets.EXT_MID], b"0")]))
    # The one-byte element claims 16 bytes of value; the block holds 1.
    packet[16] = (ids[targets.EXT_TWCC] << 4) | 0x0F
    stats = call.stack.engine.stats
    before = stats.drops["rtp_malformed"]
    listener.on_rtp(bytes(packet), call.stack.engine.clock_ms)
    assert stats.drops["rtp_malformed"] == before + 1


def test_answer_to_every_seed_offer_parses() -> None:
    stack, conn = _publisher()
    reply = conn.call("publish", sdp=lite_offer())
    assert reply["ok"]
    sdp.parse(reply["sdp"], "answer")


def test_twcc_feedback_for_a_seq_jumping_sender_stays_bounded() -> None:
    # Each packet moves the transport-wide seq 30000 ahead (the unwrapper's forward
    # limit is 32767): reporting every skipped seq as lost cost ~1.5 µs each, ~1 s of
    # CPU for this one round. Every received packet is still reported.
    rec = TwccRecorder(1, 2)
    sent = [(i * 30000) & 0xFFFF for i in range(20)]
    for i, seq in enumerate(sent):
        rec.record(seq, 1000.0 + i)
    fbs = [TwccFeedback.parse(p) for p in rec.build_feedback(1050.0)]
    reported = [(seq, arrival) for fb in fbs for seq, arrival in fb.packets]
    assert sorted(seq for seq, arrival in reported if arrival is not None) == sorted(sent)
    assert sum(1 for _, arrival in reported if arrival is None) <= MAX_LOST_PER_ROUND


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "\\ud800", "id": 1}',  # echoed in the unknown_type error
        '{"type": "hello", "id": "\\udc00", "version": 1}',  # echoed as the reply's id
    ],
)
def test_reply_echoing_a_lone_surrogate_is_still_utf8_json(frame: str) -> None:
    stack = Stack()
    [reply] = stack.session().raw(frame)
    text = encode(reply)
    assert json.loads(text.encode("utf-8")) == reply  # sendable, and the same message
    assert stack.bad_output == 0


@pytest.mark.parametrize("token", ["\ud800", "eyJ\udfff.e30.x", "é.é.é"])
def test_join_with_a_non_ascii_token_is_unauthorized(token: str) -> None:
    stack = Stack()
    conn = stack.session()
    assert conn.call("hello", version=1)["ok"]
    reply = conn.call("join", token=token)
    assert reply["ok"] is False and reply["error"]["code"] == "unauthorized"
    assert stack.internal_errors == 0
