"""VP8 RTP payload descriptor (RFC 7741 §4.2), parsed and rewritten in place.

The SFU needs the descriptor to pick temporal layers (TID), to detect keyframes for
layer switches, and to keep picture ids / TL0PICIDX continuous when it switches
simulcast layers; it never touches the VP8 bitstream itself.

     0 1 2 3 4 5 6 7
    |X|R|N|S|R| PID |   required
    |I|L|T|K| RSV   |   if X
    |M| PictureID   |   if I (M=1: 15-bit id, one more byte)
    |   TL0PICIDX   |   if L
    |TID|Y| KEYIDX  |   if T or K
"""

from __future__ import annotations

ERR_TRUNCATED = "VP8 payload descriptor is truncated"
ERR_EMPTY = "VP8 payload is empty"

_KEYFRAME_START_CODE = b"\x9d\x01\x2a"


class Vp8Descriptor:
    """Fields of one payload descriptor; `size` is its length in bytes.

    `is_keyframe` is true on the first packet of a key frame only (S=1, partition
    index 0 and the VP8 payload header's inverse key-frame bit P == 0); `width` and
    `height` come from that packet's key-frame header when it is long enough.
    """

    FIELDS = (
        "start_of_partition",
        "partition_index",
        "non_reference",
        "picture_id",
        "picture_id_bits",
        "tl0picidx",
        "tid",
        "layer_sync",
        "keyidx",
        "size",
        "is_keyframe",
        "width",
        "height",
    )
    # `_heads`: rewritten copies of this descriptor by (picture id, TL0PICIDX), see
    # `rewritten`; a cache, not a field.
    __slots__ = (*FIELDS, "_heads")

    def __init__(
        self,
        *,
        start_of_partition: bool = False,
        partition_index: int = 0,
        non_reference: bool = False,
        picture_id: int | None = None,
        picture_id_bits: int = 0,
        tl0picidx: int | None = None,
        tid: int | None = None,
        layer_sync: bool = False,
        keyidx: int | None = None,
        size: int = 1,
        is_keyframe: bool = False,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        self.start_of_partition = start_of_partition
        self.partition_index = partition_index
        self.non_reference = non_reference
        self.picture_id = picture_id
        self.picture_id_bits = picture_id_bits
        self.tl0picidx = tl0picidx
        self.tid = tid
        self.layer_sync = layer_sync
        self.keyidx = keyidx
        self.size = size
        self.is_keyframe = is_keyframe
        self.width = width
        self.height = height
        self._heads: dict[int, bytes] | None = None

    def rewritten(self, payload: bytes | memoryview, picture_id: int, tl0picidx: int | None) -> bytes:
        """This descriptor's bytes (the start of `payload`) with its picture id and
        TL0PICIDX replaced. Built once per distinct pair and shared: every subscriber
        that joined the stream at the same switch carries the same offsets, so a
        packet's fan-out builds one rewritten descriptor instead of one per subscriber."""
        heads = self._heads
        if heads is None:
            heads = self._heads = {}
        key = picture_id << 9 | (256 if tl0picidx is None else tl0picidx)
        head = heads.get(key)
        if head is None:
            buf = bytearray(payload[: self.size])
            rewrite_vp8(buf, 0, self, picture_id=picture_id, tl0picidx=tl0picidx)
            head = heads[key] = bytes(buf)
        return head

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"Vp8Descriptor({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vp8Descriptor):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]


_new = object.__new__


def parse_vp8(payload: bytes | bytearray | memoryview) -> Vp8Descriptor:
    """Parse the descriptor at the start of an RTP payload. ValueError if truncated."""
    n = len(payload)
    if n < 1:
        raise ValueError(ERR_TRUNCATED)
    b0 = payload[0]
    picture_id = tl0 = tid = keyidx = None
    bits = 0
    sync = False
    pos = 1
    try:
        if b0 & 0x80:
            x = payload[1]
            pos = 2
            if x & 0x80:  # I: picture id, 7 or 15 bits (M)
                b = payload[2]
                if b & 0x80:
                    picture_id = ((b & 0x7F) << 8) | payload[3]
                    bits = 15
                    pos = 4
                else:
                    picture_id = b
                    bits = 7
                    pos = 3
            if x & 0x40:  # L: TL0PICIDX
                tl0 = payload[pos]
                pos += 1
            if x & 0x30:  # T and/or K: TID|Y|KEYIDX
                b = payload[pos]
                pos += 1
                if x & 0x20:
                    tid = b >> 6
                    sync = b & 0x20 != 0
                if x & 0x10:
                    keyidx = b & 0x1F
    except IndexError:
        raise ValueError(ERR_TRUNCATED) from None
    if n <= pos:
        raise ValueError(ERR_EMPTY)
    d: Vp8Descriptor = _new(Vp8Descriptor)
    d.start_of_partition = s = b0 & 0x10 != 0
    d.partition_index = pid = b0 & 0x07
    d.non_reference = b0 & 0x20 != 0
    d.picture_id = picture_id
    d.picture_id_bits = bits
    d.tl0picidx = tl0
    d.tid = tid
    d.layer_sync = sync
    d.keyidx = keyidx
    d.size = pos
    d.width = d.height = None
    d._heads = None
    if s and pid == 0 and not payload[pos] & 0x01:
        _keyframe_header(d, payload, pos)
    else:
        d.is_keyframe = False
    return d


def _keyframe_header(d: Vp8Descriptor, payload: bytes | bytearray | memoryview, pos: int) -> None:
    """Key frame: 3-byte frame tag, start code 9d 01 2a, then 14-bit width/height (LE)."""
    d.is_keyframe = True
    if len(payload) >= pos + 10 and payload[pos + 3 : pos + 6] == _KEYFRAME_START_CODE:
        d.width = (payload[pos + 6] | (payload[pos + 7] << 8)) & 0x3FFF
        d.height = (payload[pos + 8] | (payload[pos + 9] << 8)) & 0x3FFF


def rewrite_vp8(
    buf: bytearray,
    offset: int,
    desc: Vp8Descriptor,
    *,
    picture_id: int | None = None,
    tl0picidx: int | None = None,
    keyidx: int | None = None,
) -> None:
    """Rewrite descriptor fields in place at `buf[offset:]`, keeping their widths.

    Values wrap to the field width (7/15-bit picture id, 8-bit TL0PICIDX, 5-bit
    KEYIDX). Rewriting a field the descriptor does not carry is a ValueError: the
    packet would have to grow, which the forwarder never does. `desc` is left
    untouched: one parsed descriptor is shared by every DownTrack of the packet.
    """
    pos = offset + 2
    bits = desc.picture_id_bits
    if picture_id is not None:
        if bits == 7:
            picture_id &= 0x7F
            buf[pos] = picture_id
        elif bits == 15:
            picture_id &= 0x7FFF
            buf[pos] = 0x80 | (picture_id >> 8)
            buf[pos + 1] = picture_id & 0xFF
        else:
            raise ValueError("VP8 descriptor has no picture id")
    pos += (bits + 1) >> 3
    if desc.tl0picidx is not None:
        if tl0picidx is not None:
            tl0picidx &= 0xFF
            buf[pos] = tl0picidx
        pos += 1
    elif tl0picidx is not None:
        raise ValueError("VP8 descriptor has no TL0PICIDX")
    if keyidx is not None:
        if desc.keyidx is None:
            raise ValueError("VP8 descriptor has no KEYIDX")
        keyidx &= 0x1F
        buf[pos] = (buf[pos] & 0xE0) | keyidx
