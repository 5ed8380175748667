"""The lite publisher's live-encoded layers: stamped pictures, keyframes when asked."""

from __future__ import annotations

import av
import pytest

from clients.lite.clips import is_vp8_keyframe
from clients.lite.live import LiveVp8Source
from clients.lite.publisher import VideoLayer
from clients.stamp import STAMP_MOD, read_stamp
from qa.participants import LITE_LAYERS


@pytest.mark.parametrize(("width", "height", "bitrate"), LITE_LAYERS)
def test_every_decoded_frame_carries_the_capture_time_it_was_encoded_with(
    width: int, height: int, bitrate: int
) -> None:
    source = LiveVp8Source(width, height, bitrate, 15)
    decoder = av.CodecContext.create("libvpx", "r")
    for i in range(30):
        stamp = 1_700_000_000_000.0 + i * 66.7
        got = source.next_frame(stamp_ms=stamp)
        assert got is not None
        (picture,) = decoder.decode(av.Packet(got[0]))
        assert read_stamp(picture.to_ndarray(format="gray")) == int(stamp) % STAMP_MOD


def test_keyframes_come_first_and_when_asked_for_only() -> None:
    """A PLI is answered with a keyframe of the picture now, not by skipping ahead."""
    source = LiveVp8Source(320, 240, 350_000, 15)
    keys = []
    for i in range(45):
        if i == 20:
            source.jump_to_keyframe()
        got = source.next_frame(stamp_ms=float(i))
        assert got is not None
        assert got[1] == is_vp8_keyframe(got[0])
        keys.append(got[1])
    assert [i for i, key in enumerate(keys) if key] == [0, 20]
    assert source.keyframes_encoded == 2 and source.frames_encoded == 45


def test_a_live_layer_reaches_its_target_bitrate() -> None:
    """The pattern is as hard to code as the clips', so Ferry sees the same layer rates."""
    source = LiveVp8Source(640, 480, 900_000, 15)
    sizes = [len(got[0]) for i in range(60) if (got := source.next_frame(stamp_ms=float(i)))]
    kbps = sum(sizes[1:]) * 8 * 15 / (len(sizes) - 1) / 1000  # the first frame is a keyframe
    assert 700 < kbps < 1100, kbps


def test_a_video_layer_over_a_live_source_delegates_frames_and_keyframe_requests() -> None:
    layer = VideoLayer("h", LiveVp8Source(160, 120, 120_000, 15))
    assert layer.live is not None and layer.frames == []
    first = layer.next_frame()
    assert first is not None and first[1]
    assert not layer.next_frame()[1]  # type: ignore[index]
    layer.jump_to_keyframe()
    again = layer.next_frame()
    assert again is not None and again[1]
    with pytest.raises(ValueError):
        VideoLayer("h", [])
