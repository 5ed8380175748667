"""Negotiated header extension ids, bound once per transport/track.

The hot path reads `ext_map.twcc` (a plain int attribute) instead of looking a URI
up in a dict per packet, like aiortc's `HeaderExtensionsMap.configure`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from media.ortc import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
    HeaderExtension,
)

_ATTRS = {
    EXT_MID: "mid",
    EXT_RID: "rid",
    EXT_REPAIRED_RID: "repaired_rid",
    EXT_AUDIO_LEVEL: "audio_level",
    EXT_ABS_SEND_TIME: "abs_send_time",
    EXT_TWCC: "twcc",
}


class ExtensionMap:
    """URI <-> id map with fast attributes for the extensions Ferry uses (None if absent)."""

    __slots__ = ("_by_uri", "_by_id", "mid", "rid", "repaired_rid", "audio_level", "abs_send_time", "twcc")

    def __init__(self, extensions: Mapping[str, int] | Iterable[HeaderExtension] = ()) -> None:
        if isinstance(extensions, Mapping):
            pairs = list(extensions.items())
        else:
            pairs = [(ext.uri, ext.id) for ext in extensions]
        self._by_uri: dict[str, int] = {}
        self._by_id: dict[int, str] = {}
        for uri, ext_id in pairs:
            if not 1 <= ext_id <= 255:
                raise ValueError(f"header extension id {ext_id} for {uri} is outside 1..255")
            if ext_id in self._by_id and self._by_id[ext_id] != uri:
                raise ValueError(
                    f"header extension id {ext_id} is used by both {self._by_id[ext_id]} and {uri}"
                )
            self._by_uri[uri] = ext_id
            self._by_id[ext_id] = uri
        self.mid: int | None = self._by_uri.get(EXT_MID)
        self.rid: int | None = self._by_uri.get(EXT_RID)
        self.repaired_rid: int | None = self._by_uri.get(EXT_REPAIRED_RID)
        self.audio_level: int | None = self._by_uri.get(EXT_AUDIO_LEVEL)
        self.abs_send_time: int | None = self._by_uri.get(EXT_ABS_SEND_TIME)
        self.twcc: int | None = self._by_uri.get(EXT_TWCC)

    def id_of(self, uri: str) -> int | None:
        return self._by_uri.get(uri)

    def uri_of(self, ext_id: int) -> str | None:
        return self._by_id.get(ext_id)

    def to_dict(self) -> dict[str, int]:
        return dict(self._by_uri)

    def __contains__(self, uri: object) -> bool:
        return uri in self._by_uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtensionMap) and other._by_uri == self._by_uri

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        known = ", ".join(f"{_ATTRS.get(u, u)}={i}" for u, i in sorted(self._by_uri.items(), key=lambda x: x[1]))
        return f"ExtensionMap({known})"
