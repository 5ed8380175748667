"""Subscriber negotiation never wedges, on the in-memory stack.

Before: every track ever offered to a viewer added an m-line, so ~120 tracks of churn
pushed its answer past the 64 KiB frame limit; the ``too_large`` error carried no id;
the offer stayed pending forever. Now inactive m-lines are recycled, publishers are
bounded, oversized requests are answered by id, and an offer without a usable answer is
sent again from the room ticker.
"""

from __future__ import annotations

import json
import random

from media.ortc import MediaDescription
from signaling import sdp
from signaling.protocol import MAX_MESSAGE_BYTES, MAX_RECOVERABLE_BYTES
from signaling.rooms import ANSWER_RETRY_S, SUBSCRIBER_ANSWER_TIMEOUT_S, Participant, _same_media
from signaling.sdp import build_subscriber_answer

from .fakes import ManualClock, Vp8Layer, vp8_fields
from .fuzz.harness import CLIENT_CERT, Conn, Stack, lite_offer
from .test_routing import LAYER_SSRCS, feed, subscribe, video_track


def _participant(stack: Stack, room: str, identity: str) -> Participant:
    return next(p for p in stack.rooms.rooms[room].participants.values() if p.identity == identity)


def _answer_text(offer_sdp: str) -> str:
    offer = sdp.parse(offer_sdp, "offer")
    return build_subscriber_answer(
        offer, ufrag="view", pwd="viewerpasswordviewerpass", fingerprint=("sha-256", CLIENT_CERT.fingerprint())
    )


def _answer(conn: Conn, offer: dict) -> dict:
    return conn.call("subscriber_answer", sdp=_answer_text(offer["sdp"]), version=offer["version"])


def _settle(conn: Conn, viewer: Participant) -> list[str]:
    """Answer offers until none is pending; returns the offers and answers sent."""
    texts = []
    while viewer.offer_pending:
        offer = conn.last("subscriber_offer")
        assert offer is not None and offer["version"] == viewer.offer_version
        reply = _answer(conn, offer)
        assert reply["ok"], reply
        texts += [json.dumps(offer), _answer_text(offer["sdp"])]
    return texts


def _audio_offer(count: int) -> str:
    """A publisher offer with `count` audio m-lines (lite_offer's audio section, repeated)."""
    text = lite_offer(simulcast=False, audio=True)
    head, *sections = text.split("m=")
    audio = "m=" + next(s for s in sections if s.startswith("audio"))
    copies = [
        audio.replace("a=mid:0", f"a=mid:{i}").replace(str(0x1111), str(0x1000 + i)).replace(" mic", f" mic{i}")
        for i in range(count)
    ]
    head = head.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE " + " ".join(map(str, range(count))))
    return head + "".join(copies)


def test_track_churn_recycles_mlines_so_the_viewer_sdp_stays_bounded():
    stack = Stack()
    view = stack.session()
    view.join("churn", "view")
    viewer = _participant(stack, "churn", "view")
    publishers: list[Conn] = []
    largest = 0
    for i in range(75):  # 150 tracks (audio + video each), at most two publishers at once
        conn = stack.session()
        conn.join("churn", f"pub{i}")
        assert conn.call("publish", sdp=lite_offer(simulcast=False))["ok"]
        publishers.append(conn)
        largest = max([largest, *map(len, _settle(view, viewer))])
        if len(publishers) > 2:
            assert publishers.pop(0).call("leave")["ok"]
            largest = max([largest, *map(len, _settle(view, viewer))])
    assert len(viewer.sections) <= 6, f"{len(viewer.sections)} m-lines after 150 tracks"
    assert largest < MAX_MESSAGE_BYTES // 4, f"largest offer/answer {largest} bytes"
    # The viewer still receives what is published now, on recycled mids.
    live = {t.sid for p in stack.rooms.rooms["churn"].participants.values() for t in p.tracks()}
    downs = viewer.media.subscriber.down_tracks
    assert set(downs) == live and len(live) == 4
    assert {d.mid for d in downs.values()} <= {s.description.mid for s in viewer.sections}
    assert stack.internal_errors == 0


def test_recycled_mline_keeps_its_kind_and_ssrcs_for_the_next_track():
    stack = Stack()
    view = stack.session()
    view.join("kinds", "view")
    viewer = _participant(stack, "kinds", "view")
    first = stack.session()
    first.join("kinds", "first")
    assert first.call("publish", sdp=lite_offer(simulcast=False))["ok"]
    _settle(view, viewer)
    before = {s.description.mid: (s.description.kind, s.description.encodings[0].ssrc) for s in viewer.sections}
    assert first.call("leave")["ok"]
    _settle(view, viewer)
    assert all(s.free for s in viewer.sections)
    second = stack.session()
    second.join("kinds", "second")
    assert second.call("publish", sdp=lite_offer(simulcast=False))["ok"]
    _settle(view, viewer)
    after = {s.description.mid: (s.description.kind, s.description.encodings[0].ssrc) for s in viewer.sections}
    assert set(after) == set(before)
    # Same SSRCs: aiortc routes by the SSRCs an m-line had when it first received.
    assert after == before
    offer = sdp.parse(view.last("subscriber_offer")["sdp"], "offer")
    second_sid = _participant(stack, "kinds", "second").sid
    assert all(m.direction == "sendonly" and m.msid and m.msid[0] == second_sid for m in offer.media)


def test_publishing_more_tracks_than_allowed_is_refused_with_too_many_tracks():
    stack = Stack()
    limit = stack.rooms.max_tracks_per_participant
    conn = stack.session()
    conn.join("many", "bot")
    reply = conn.call("publish", sdp=_audio_offer(40))
    assert not reply["ok"] and reply["error"]["code"] == "too_many_tracks", reply
    assert str(limit) in reply["error"]["message"]
    assert _participant(stack, "many", "bot").tracks() == []
    reply = conn.call("publish", sdp=_audio_offer(limit))
    assert reply["ok"], reply
    assert len(_participant(stack, "many", "bot").tracks()) == limit
    # Adding one more on a later offer is refused too, and what was published stays.
    reply = conn.call("publish", sdp=_audio_offer(limit + 1))
    assert not reply["ok"] and reply["error"]["code"] == "too_many_tracks", reply
    assert len(_participant(stack, "many", "bot").tracks()) == limit


def test_oversized_request_gets_too_large_with_its_id():
    stack = Stack()
    conn = stack.session()
    conn.join("big", "view")
    big = json.dumps({"type": "trickle", "id": 77, "target": "subscriber", "candidate": "x" * 100_000})
    assert MAX_MESSAGE_BYTES < len(big) <= MAX_RECOVERABLE_BYTES
    (reply,) = conn.raw(big)
    assert reply == {**reply, "type": "trickle", "id": 77, "ok": False}
    assert reply["error"]["code"] == "too_large"
    # Beyond what is worth parsing, or not JSON at all: an error event without an id.
    for frame in ("x" * (MAX_RECOVERABLE_BYTES + 1), "{" * (MAX_MESSAGE_BYTES + 1)):
        (event,) = conn.raw(frame)
        assert event["type"] == "error" and "id" not in event and event["error"]["code"] == "too_large"


def _viewer_with_pending_offer(stack: Stack) -> tuple[Conn, Participant, dict]:
    pub = stack.session()
    pub.join("lost", "pub")
    assert pub.call("publish", sdp=lite_offer())["ok"]
    view = stack.session()
    view.join("lost", "view")
    viewer = _participant(stack, "lost", "view")
    offer = view.last("subscriber_offer")
    assert offer is not None and viewer.offer_pending
    return view, viewer, offer


def _tick_after(stack: Stack, seconds: float) -> None:
    """Move the virtual clock, then run the room ticker as the server does."""
    stack.engine.advance(seconds * 1000.0)
    stack.rooms.on_timer(stack.now())


def test_unanswered_subscriber_offer_is_offered_again():
    stack = Stack()
    view, viewer, first = _viewer_with_pending_offer(stack)
    _tick_after(stack, 0.0)  # the first tick that sees the offer pending starts its clock
    _tick_after(stack, SUBSCRIBER_ANSWER_TIMEOUT_S - 0.1)
    assert view.last("subscriber_offer") is first
    _tick_after(stack, 0.1)
    again = view.last("subscriber_offer")
    assert again is not first and again["version"] == first["version"] + 1
    assert [m.mid for m in sdp.parse(again["sdp"], "offer").media] == ["0", "1"]
    late = _answer(view, first)  # the lost answer turning up after all
    assert not late["ok"] and late["error"]["code"] == "conflict"
    assert _answer(view, again)["ok"]
    assert not viewer.offer_pending and len(viewer.media.subscriber.down_tracks) == 2


def test_failed_subscriber_answer_is_offered_again_with_backoff():
    stack = Stack()
    view, viewer, offer = _viewer_with_pending_offer(stack)
    retry = ANSWER_RETRY_S
    for _ in range(3):  # each failure in a row doubles the delay before the next offer
        reply = view.call("subscriber_answer", sdp="v=0\r\nnot an answer\r\n", version=offer["version"])
        assert not reply["ok"] and reply["error"]["code"] == "bad_request"
        _tick_after(stack, retry - 0.01)
        assert view.last("subscriber_offer") is offer
        _tick_after(stack, 0.01)
        new = view.last("subscriber_offer")
        assert new["version"] == offer["version"] + 1
        offer = new
        retry *= 2
    assert _answer(view, offer)["ok"]
    assert not viewer.offer_pending and viewer.answer_failures == 0
    assert len(viewer.media.subscriber.down_tracks) == 2
    assert stack.internal_errors == 0


def test_only_an_mline_with_the_same_kind_and_codecs_is_recycled():
    audio = MediaDescription(mid="0", kind="audio", direction="inactive", codecs=sdp.default_subscriber_codecs("audio"))
    assert _same_media(audio, "audio", sdp.default_subscriber_codecs("audio"))
    assert not _same_media(audio, "audio", sdp.default_subscriber_codecs("audio", red=True))  # other payload types
    assert not _same_media(audio, "video", sdp.default_subscriber_codecs("video"))


def test_next_downtrack_on_a_recycled_mline_continues_the_stream():
    # Publisher 1's video reaches the viewer, then publisher 2's takes the same m-line
    # and SSRC half a second later: one stream for the receiver, no jump in seq/ts/pid.
    first, _, _ = video_track()
    down1, sink1 = subscribe(first)
    clock = ManualClock(1000.0)
    pub1 = Vp8Layer(0, LAYER_SSRCS[0], seq=5000, ts=10_000, picture_id=300)
    feed(first, 0, pub1.frame(keyframe=True, packets=2), clock.advance(33))
    for _ in range(5):
        feed(first, 0, pub1.frame(packets=2), clock.advance(33))
    last = sink1.media()[-1]
    down1.close()
    second, _, _ = video_track()
    down2, sink2 = subscribe(second, rng=random.Random(2))  # another random start
    down2.continue_from(down1.continuity())
    pub2 = Vp8Layer(0, LAYER_SSRCS[0], seq=100, ts=777_000, picture_id=20)
    feed(second, 0, pub2.frame(keyframe=True, packets=2), clock.advance(500))
    head = sink2.media()[0]
    assert head.view.ssrc == last.view.ssrc
    assert head.view.seq == (last.view.seq + 1) & 0xFFFF
    assert (head.view.timestamp - last.view.timestamp) & 0xFFFFFFFF == 500 * 90
    assert vp8_fields(head.data)[0] == vp8_fields(last.data)[0] + 1


def test_tracks_past_the_viewer_mline_limit_are_reported_then_offered_when_one_frees():
    stack = Stack()
    view = stack.session()
    view.join("cap", "view")
    viewer = _participant(stack, "cap", "view")
    viewer.max_sections = 20
    first, second = stack.session(), stack.session()
    first.join("cap", "first")
    second.join("cap", "second")
    assert first.call("publish", sdp=_audio_offer(16))["ok"]
    _settle(view, viewer)
    assert second.call("publish", sdp=_audio_offer(16))["ok"]
    _settle(view, viewer)
    failed = [m for m in view.replies if m.get("type") == "subscription_failed"]
    assert len(viewer.sections) == 20
    assert len(failed) == 12 and {m["reason"] for m in failed} == {"max_subscribed_tracks"}
    assert {m["limit"] for m in failed} == {20}
    waiting = {m["track_sid"] for m in failed}
    second_sids = {t.sid for t in _participant(stack, "cap", "second").tracks()}
    assert waiting <= second_sids
    # Reported once: another renegotiation does not repeat the events.
    viewer.renegotiate()
    _settle(view, viewer)
    assert len([m for m in view.replies if m.get("type") == "subscription_failed"]) == 12
    # The first publisher leaves: its m-lines go inactive, then carry the waiting tracks.
    assert first.call("leave")["ok"]
    _settle(view, viewer)
    downs = viewer.media.subscriber.down_tracks
    assert set(downs) == second_sids and len(viewer.sections) == 20
    assert not viewer.over_limit
    assert stack.internal_errors == 0
