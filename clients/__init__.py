"""Ferry's Python clients, on top of ``signaling`` (protocol, SDP) and ``media``.

- ``client``: :class:`FerryClient`, aiortc publisher/subscriber PCs (with ``sink``,
  ``rtc_stats``, ``loopback``), and ``cli``: ``ferry client join``;
- ``lite``: :class:`LiteClient`, a cheap endpoint on Ferry's own cores;
- ``session`` and ``channel``: the signaling both share;
- ``media_sources``: test pattern and tone tracks; ``chromium``: how tools launch
  headless Chromium.
"""
