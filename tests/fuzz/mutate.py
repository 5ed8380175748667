"""Seeded mutation operators shared by the `--cases` engine and the hypothesis tests.

Each operator is a pure function of its input and explicit choices, so the random
engine (`Mutator`, choices from `random.Random`) and hypothesis (choices drawn by
strategies, see tests/test_fuzz.py) apply the very same mutations. Binary inputs get
AFL-style havoc (bit flips, interesting values, block insert/delete/duplicate, splices);
text inputs are mutated per line and per token, which keeps most SDP lines parseable
enough to reach the code behind the parser.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x40, 0xC0, 0xFE)
INTERESTING_16 = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x0100, 0x00FF, 0xFFFE, 4, 8)
INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x2112A442, 0x10000, 0xFFFF)

# Tokens that mean something to an SDP parser, for inserting and replacing.
SDP_TOKENS = (
    "0", "1", "-1", "65535", "65536", "4294967296", "99999999999999999999", "", " ", ":", "/",
    ";", "=", "*", "~", "a", "x", "audio", "video", "application", "opus/48000/2", "VP8/90000",
    "H264/90000", "rtx/90000", "red/48000/2", "ulpfec/90000", "apt=96", "apt=", "apt=999",
    "111/111", "sendonly", "recvonly", "sendrecv", "inactive", "active", "passive", "actpass",
    "holdconn", "send", "recv", "q;h;f", "~q;h", "q,h;f", "rid", "mid", "pt=96",
    "max-width=0", "sha-256", "sha-1", "md5", "UDP/TLS/RTP/SAVPF", "RTP/AVP", "DTLS/SCTP",
    "BUNDLE", "FID", "SIM", "FEC-FR", "goog-remb", "transport-cc", "nack", "pli", "ccm fir",
    "\x00", "\u00e9", "\ufffd", "\ud800", "%s", "\t",
)
SDP_LINES = (
    "a=group:BUNDLE", "a=group:BUNDLE 0 0", "a=group:BUNDLE 7", "a=group:LS 0 1",
    "a=setup:passive", "a=setup:active", "a=setup:holdconn", "a=setup:",
    "a=rtcp-mux", "a=rtcp-rsize", "a=extmap-allow-mixed", "a=ice-lite",
    "a=mid:0", "a=mid:1", "a=mid:", "a=sendonly", "a=recvonly", "a=inactive",
    "a=rid:q send", "a=rid:h send max-width=640", "a=rid:f recv", "a=rid:q send pt=96",
    "a=simulcast:send q;h;f", "a=simulcast:send ~q;h", "a=simulcast:recv q", "a=simulcast:send",
    "a=ssrc-group:FID 1 2", "a=ssrc-group:FID 1", "a=ssrc-group:SIM 1 2 3", "a=ssrc:1 cname:x",
    "a=ssrc:0 msid:s t", "a=ssrc:4294967295 cname:y", "a=msid:s t", "a=msid:-", "a=msid:",
    "a=msid:\ud800 \udfff", "a=ssrc:1 cname:\ud800", "a=mid:\ud800", "a=rid:\ud800 send",
    "a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96", "a=fmtp:97 apt=97",
    "a=rtpmap:111 opus/48000/2", "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111", "a=fmtp:63 63/63",
    "a=rtpmap:96 H264/90000", "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1",
    "a=rtcp-fb:96 nack", "a=rtcp-fb:* transport-cc", "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:15 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:255/sendonly urn:x",
    "a=extmap:0 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=ice-ufrag:x", "a=ice-pwd:y", "a=fingerprint:sha-256 00", "a=fingerprint:md2 AA:BB",
    "a=candidate:1 1 udp 1 127.0.0.1 1 typ host", "a=end-of-candidates",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "m=audio 0 UDP/TLS/RTP/SAVPF 111",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "m=video 9 RTP/AVP 96", "m=audio 9 X",
    "c=IN IP4 0.0.0.0", "c=IN IP6 ::1", "b=AS:30", "v=0", "v=1", "o=- 1 2 IN IP4 127.0.0.1",
    "s=-", "t=0 0", "a=", "a=:", "x=y", "=", "a=sctp-port:5000",
)


class Mutator:
    """Random choices for the operators below, from one seeded `random.Random`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- bytes ---------------------------------------------------------------------
    def ops(self, n_ops: int, size: int) -> list[Op]:
        """1 + an exponential number of (operator, position, choice, donor) picks."""
        rng = self.rng
        return [
            (rng.randrange(n_ops), rng.randrange(size + 1), rng.getrandbits(32), rng.getrandbits(16))
            for _ in range(1 + int(rng.expovariate(0.7)))
        ]

    def bytes(self, data: bytes, corpus: Sequence[bytes] = ()) -> bytes:
        return apply_byte_ops(data, self.ops(len(BYTE_OPS), len(data)), corpus)

    def lines(self, text: str, corpus: Sequence[str] = ()) -> str:
        out = apply_line_ops(text, self.ops(len(LINE_OPS), text.count("\n")), corpus)
        return out if self.rng.random() < 0.95 else out.rstrip("\r\n")

    # -- JSON values ---------------------------------------------------------------
    def json(self, value: Any, depth: int = 0) -> Any:
        return mutate_json(value, self.rng.getrandbits, depth)


# (operator index, position, a 32-bit choice, donor index): one mutation, as data.
Op = tuple[int, int, int, int]


def apply_byte_ops(data: bytes, ops: Sequence[Op], corpus: Sequence[bytes] = ()) -> bytes:
    """Apply binary mutations in order; positions wrap to the current length."""
    out = data
    for op, pos, arg, donor in ops:
        other = corpus[donor % len(corpus)] if corpus else b""
        out = BYTE_OPS[op % len(BYTE_OPS)](out, pos % (len(out) + 1), arg, other)
    return out


def apply_line_ops(text: str, ops: Sequence[Op], corpus: Sequence[str] = ()) -> str:
    """Apply line mutations in order; the result ends in CRLF like real SDP."""
    lines = text.splitlines()
    for op, idx, arg, donor in ops:
        donor_lines = corpus[donor % len(corpus)].splitlines() if corpus else lines
        lines = LINE_OPS[op % len(LINE_OPS)](lines, idx % (len(lines) + 1), arg, donor_lines)
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------- binary ops
# Each takes (data, position, a 32-bit choice, a donor from the corpus) -> new data.


def _flip_bit(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    if not data:
        return data
    pos %= len(data)
    return data[:pos] + bytes([data[pos] ^ (1 << (arg % 8))]) + data[pos + 1 :]


def _set_byte(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    if not data:
        return data
    pos %= len(data)
    value = INTERESTING_8[arg % len(INTERESTING_8)] if arg & 0x100 else arg & 0xFF
    return data[:pos] + bytes([value]) + data[pos + 1 :]


def _set_word(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    if len(data) < 2:
        return data
    pos %= len(data) - 1
    value = INTERESTING_16[arg % len(INTERESTING_16)] if arg & 0x10000 else (arg >> 8) & 0xFFFF
    return data[:pos] + struct.pack("!H", value) + data[pos + 2 :]


def _set_dword(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    if len(data) < 4:
        return data
    pos %= len(data) - 3
    return data[:pos] + struct.pack("!I", INTERESTING_32[arg % len(INTERESTING_32)]) + data[pos + 4 :]


def _add_word(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    if len(data) < 2:
        return data
    pos %= len(data) - 1
    (value,) = struct.unpack_from("!H", data, pos)
    delta = (arg % 33) - 16
    return data[:pos] + struct.pack("!H", (value + delta) & 0xFFFF) + data[pos + 2 :]


def _delete(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    return data[:pos] + data[pos + 1 + arg % 16 :]


def _insert(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    n = 1 + arg % 16
    fill = bytes([(arg >> 8) & 0xFF]) * n if arg & 0x80000000 else random.Random(arg).randbytes(n)
    return data[:pos] + fill + data[pos:]


def _duplicate(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    n = 1 + arg % 64
    return data[:pos] + data[pos : pos + n] + data[pos:]


def _truncate(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    return data[:pos]


def _splice(data: bytes, pos: int, arg: int, other: bytes) -> bytes:
    if not other:
        return data
    cut = arg % (len(other) + 1)
    return data[:pos] + other[cut:]


BYTE_OPS: tuple[Callable[[bytes, int, int, bytes], bytes], ...] = (
    _flip_bit, _flip_bit, _set_byte, _set_byte, _set_word, _set_dword, _add_word,
    _delete, _insert, _duplicate, _truncate, _splice,
)


# ----------------------------------------------------------------------------- line ops
# Each takes (lines, index, a 32-bit choice, donor lines) -> new lines.


def _drop_line(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    return lines[:idx] + lines[idx + 1 :]


def _dup_line(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    if not lines:
        return lines
    idx %= len(lines)
    return lines[: idx + 1] + [lines[idx]] + lines[idx + 1 :]


def _swap_lines(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    if len(lines) < 2:
        return lines
    out = list(lines)
    i, j = idx % len(out), arg % len(out)
    out[i], out[j] = out[j], out[i]
    return out


def _insert_known_line(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    return lines[:idx] + [SDP_LINES[arg % len(SDP_LINES)]] + lines[idx:]


def _insert_donor_line(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    if not donor:
        return lines
    return lines[:idx] + [donor[arg % len(donor)]] + lines[idx:]


def _replace_token(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    """Replace one space/colon/slash/semicolon-separated token of a line."""
    if not lines:
        return lines
    idx %= len(lines)
    line = lines[idx]
    cuts = [0] + [i + 1 for i, ch in enumerate(line) if ch in " :/;=,"] + [len(line) + 1]
    k = arg % (len(cuts) - 1)
    start, end = cuts[k], max(cuts[k], cuts[k + 1] - 1)
    token = SDP_TOKENS[(arg >> 8) % len(SDP_TOKENS)]
    return lines[:idx] + [line[:start] + token + line[end:]] + lines[idx + 1 :]


def _tweak_number(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    """Change one run of digits: +-1, zero, huge, or negative."""
    if not lines:
        return lines
    idx %= len(lines)
    line = lines[idx]
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(line):
        if line[i].isdigit():
            j = i
            while j < len(line) and line[j].isdigit():
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    if not runs:
        return lines
    start, end = runs[arg % len(runs)]
    n = int(line[start:end])
    choice = (arg >> 8) % 6
    new = str((n + 1, max(n - 1, 0), 0, 2**32, 2**64 + n, -n)[choice])
    return lines[:idx] + [line[:start] + new + line[end:]] + lines[idx + 1 :]


def _byte_flip_line(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    if not lines:
        return lines
    idx %= len(lines)
    line = lines[idx]
    if not line:
        return lines
    pos = arg % len(line)
    ch = chr((ord(line[pos]) ^ (1 << ((arg >> 16) % 7))) or 0x20)
    return lines[:idx] + [line[:pos] + ch + line[pos + 1 :]] + lines[idx + 1 :]


def _cut_line(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    if not lines:
        return lines
    idx %= len(lines)
    line = lines[idx]
    return lines[:idx] + [line[: arg % (len(line) + 1)]] + lines[idx + 1 :]


def _drop_section(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    """Remove one m= section (or the session part before the first)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        return lines
    k = arg % len(starts)
    end = starts[k + 1] if k + 1 < len(starts) else len(lines)
    return lines[: starts[k]] + lines[end:]


def _dup_section(lines: list[str], idx: int, arg: int, donor: list[str]) -> list[str]:
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        return lines
    k = arg % len(starts)
    end = starts[k + 1] if k + 1 < len(starts) else len(lines)
    return lines + lines[starts[k] : end]


LINE_OPS: tuple[Callable[[list[str], int, int, list[str]], list[str]], ...] = (
    _drop_line, _dup_line, _swap_lines, _insert_known_line, _insert_known_line, _insert_donor_line,
    _replace_token, _replace_token, _replace_token, _tweak_number, _tweak_number, _byte_flip_line,
    _cut_line, _drop_section, _dup_section,
)


# ------------------------------------------------------------------------------- JSON

JSON_ODDITIES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, 2**63, -(2**70), float("inf"), float("nan"), "", "x" * 300,
    "TR_x", "PA_x", "\u0000", "\ud800", "a\udfffb", [], [None], {}, {"a": 1}, [1, [2, [3]]], "h", "q", "f", 1e308,
)


def mutate_json(value: Any, bits: Callable[[int], int], depth: int = 0) -> Any:
    """One structural change somewhere in `value`; `bits(n)` supplies the choices."""
    if isinstance(value, dict) and value and depth < 4 and bits(2):
        key = sorted(value, key=str)[bits(16) % len(value)]
        out = dict(value)
        choice = bits(3)
        if choice == 0:
            del out[key]
        elif choice == 1:
            out["k" + str(bits(8))] = JSON_ODDITIES[bits(8) % len(JSON_ODDITIES)]
        else:
            out[key] = mutate_json(value[key], bits, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4 and bits(1):
        out_list = list(value)
        i = bits(16) % len(out_list)
        if bits(1):
            out_list[i] = mutate_json(out_list[i], bits, depth + 1)
        else:
            del out_list[i]
        return out_list
    if isinstance(value, str) and value and bits(1):
        pos = bits(16) % len(value)
        return value[:pos] + chr(bits(7) or 1) + value[pos + 1 :]
    if isinstance(value, bool) and bits(1):
        return not value
    if isinstance(value, int) and not isinstance(value, bool) and bits(1):
        return value + (bits(4) - 8)
    return JSON_ODDITIES[bits(8) % len(JSON_ODDITIES)]
