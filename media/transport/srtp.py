"""SRTP/SRTCP protection for one transport, a thin wrapper over pylibsrtp.

One outbound and one inbound libsrtp session per transport. The inbound policy uses
`ssrc_any_inbound` because a simulcast publisher's SSRCs are only learned from RTP
(DESIGN §8). This sits on the hot path (DESIGN §3): the methods do nothing but call into
libsrtp and translate its errors.
"""

from __future__ import annotations

import pylibsrtp
from pylibsrtp import Policy, Session

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


class SrtpContext:
    """Protects what this side sends and unprotects what the peer sends."""

    __slots__ = ("profile", "_tx", "_rx")

    def __init__(self, profile: str, tx_key_salt: bytes, rx_key_salt: bytes) -> None:
        self.profile = profile
        self._tx = _session(profile, tx_key_salt, Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(profile, rx_key_salt, Policy.SSRC_ANY_INBOUND)

    def protect(self, rtp: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet for sending."""
        try:
            return self._tx.protect(rtp)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from None

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
