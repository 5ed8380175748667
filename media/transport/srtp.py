"""SRTP/SRTCP protection for one transport, a thin wrapper over pylibsrtp.

One outbound and one inbound libsrtp session per transport. The inbound policy uses
`ssrc_any_inbound` because a simulcast publisher's SSRCs are only learned from RTP
(DESIGN §8). This sits on the hot path (DESIGN §3): the methods do nothing but call into
libsrtp and translate its errors. `protect` writes the packet straight into the
session's libsrtp buffer (pylibsrtp's binding), so a forwarded packet is copied once
after the DownTrack built it, and the transport-wide seq is stamped in that buffer.
"""

from __future__ import annotations

import struct

import pylibsrtp
from pylibsrtp import Policy, Session

try:
    from pylibsrtp._binding import ffi as _ffi
    from pylibsrtp._binding import lib as _lib
except ImportError:  # a pylibsrtp without its cffi binding module: public API only
    _ffi = _lib = None

# Profile names as negotiated by DTLS-SRTP (RFC 5764 / RFC 7714), in OpenSSL's spelling.
SRTP_AEAD_AES_128_GCM = "SRTP_AEAD_AES_128_GCM"
SRTP_AEAD_AES_256_GCM = "SRTP_AEAD_AES_256_GCM"
SRTP_AES128_CM_SHA1_80 = "SRTP_AES128_CM_SHA1_80"

# profile -> (libsrtp profile id, master key length, master salt length)
PROFILES: dict[str, tuple[int, int, int]] = {
    SRTP_AEAD_AES_128_GCM: (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    SRTP_AEAD_AES_256_GCM: (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
    SRTP_AES128_CM_SHA1_80: (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
}

# Replay window in packets: a video keyframe burst plus NACK retransmissions can arrive
# far behind the newest sequence number; libsrtp's default of 128 is too small.
REPLAY_WINDOW = 1024


class SrtpError(ValueError):
    """An SRTP/SRTCP packet failed authentication, was replayed, or is malformed."""


class SrtpReplayError(SrtpError):
    """An SRTP/SRTCP packet's index was already seen or is behind the replay window.

    Kept apart from authentication failures because the two mean different things to an
    operator: replays are duplicates on the path (or an attack replaying captured
    packets), auth failures are corruption, a wrong key or forged packets. libsrtp checks
    the index before the tag, so an unauthenticated packet with an old index counts here.
    """


# pylibsrtp raises one `Error` type whose text is libsrtp's status string; these are the
# statuses of its replay check (srtp_err_status_replay_fail, _replay_old, _pkt_idx_old).
_REPLAY_STATUSES = frozenset(
    {
        "replay check failed (bad index)",
        "replay check failed (index too old)",
        "packet index is too old to consider",
    }
)


def _unprotect_error(what: str, exc: Exception) -> SrtpError:
    cls = SrtpReplayError if str(exc) in _REPLAY_STATUSES else SrtpError
    return cls(f"{what} unprotect failed: {exc}")


def key_salt_length(profile: str) -> int:
    """Length of the concatenated master key + salt for `profile`."""
    try:
        _, key_len, salt_len = PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown SRTP profile {profile!r}; allowed: {', '.join(PROFILES)}"
        ) from None
    return key_len + salt_len


def _session(profile: str, key_salt: bytes, ssrc_type: int) -> Session:
    expected = key_salt_length(profile)
    if len(key_salt) != expected:
        raise ValueError(
            f"{profile} needs {expected} bytes of master key + salt, got {len(key_salt)}"
        )
    policy = Policy(key=key_salt, ssrc_type=ssrc_type, srtp_profile=PROFILES[profile][0])
    # Re-protecting the same (SSRC, seq) is how a NACK is answered without RTX.
    policy.allow_repeat_tx = True
    policy.window_size = REPLAY_WINDOW
    return Session(policy)


def _status_text(status: int) -> str:
    errors = getattr(pylibsrtp, "ERRORS", ())
    return errors[status] if 0 <= status < len(errors) else f"libsrtp status {status}"


# Address of pylibsrtp's srtp_protect, for the native send path (`udp_mux`): it
# protects with the same libsrtp sessions, so both paths share one SRTP state.
PROTECT_ADDRESS = (
    int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_protect"))) if _lib is not None else 0
)

_SEQ = struct.Struct("!H")
_TRAILER_ROOM = 144  # libsrtp's SRTP_MAX_TRAILER_LEN: what protect may append


class SrtpContext:
    """Protects what this side sends and unprotects what the peer sends."""

    __slots__ = ("profile", "_tx", "_rx", "_direct", "_len", "native_tx")

    def __init__(self, profile: str, tx_key_salt: bytes, rx_key_salt: bytes) -> None:
        self.profile = profile
        self._tx = _session(profile, tx_key_salt, Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(profile, rx_key_salt, Policy.SSRC_ANY_INBOUND)
        tx = self._tx
        # (srtp_t, char[] buffer, buffer view) of the outbound session, when reachable.
        self._direct = None
        self._len = None
        # The outbound srtp_t as an address for the native send path; 0: not reachable.
        self.native_tx = 0
        if _lib is not None and all(hasattr(tx, a) for a in ("_srtp", "_cdata", "_buffer")):
            self._direct = (tx._srtp, tx._cdata, tx._buffer)  # type: ignore[attr-defined]
            self._len = _ffi.new("int *")
            self.native_tx = int(_ffi.cast("uintptr_t", tx._srtp[0]))  # type: ignore[attr-defined]

    def protect(self, rtp: bytes, seq_at: int = 0, seq: int = 0) -> bytes:
        """Encrypt and authenticate one RTP packet for sending.

        `seq_at` > 0: the 16-bit `seq` is written at that byte first (the transport-wide
        sequence number, assigned at send time), in the copy libsrtp encrypts; `rtp`
        itself is left as it is.
        """
        direct = self._direct
        if direct is None:
            if seq_at:
                buf = bytearray(rtp)
                _SEQ.pack_into(buf, seq_at, seq & 0xFFFF)
                rtp = bytes(buf)
            try:
                return self._tx.protect(rtp)
            except (pylibsrtp.Error, ValueError, TypeError) as exc:
                raise SrtpError(f"SRTP protect failed: {exc}") from None
        srtp, cdata, buffer = direct
        n = len(rtp)
        if n > len(buffer) - _TRAILER_ROOM:
            raise SrtpError("SRTP protect failed: packet is too long")
        buffer[0:n] = rtp
        if seq_at:
            _SEQ.pack_into(buffer, seq_at, seq & 0xFFFF)
        length = self._len
        length[0] = n
        status = _lib.srtp_protect(srtp[0], cdata, length)
        if status:
            raise SrtpError(f"SRTP protect failed: {_status_text(status)}")
        return buffer[0 : length[0]]

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet for sending."""
        try:
            return self._tx.protect_rtcp(rtcp)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from None

    def unprotect(self, data: bytes) -> bytes:
        """Verify and decrypt one SRTP packet.

        Raises `SrtpReplayError` for a replayed index, `SrtpError` for anything else.
        """
        try:
            return self._rx.unprotect(data)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise _unprotect_error("SRTP", exc) from None

    def unprotect_rtcp(self, data: bytes) -> bytes:
        """Verify and decrypt one SRTCP packet.

        Raises `SrtpReplayError` for a replayed index, `SrtpError` for anything else.
        """
        try:
            return self._rx.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise _unprotect_error("SRTCP", exc) from None
