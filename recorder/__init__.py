"""Ferry: recorder. Per-track files from RTP without transcoding, crash-safe.

Layout (one concept per module):

- ``depacketize``: RTP payloads of a frame -> VP8 / H.264 Annex B / Opus frame bytes
- ``jitter``: one stream's packets -> complete frames in order; loss after a wait
- ``assembler``: a track's simulcast layers -> one timeline (switch on keyframes)
- ``mux``: frames -> WebM / Matroska / Ogg with PyAV, flushed for crash safety
- ``worker``: the writer thread and its bounded, counting queue
- ``track_recorder``: the ``PacketSink`` gluing the above for one track
- ``recording``: one room's recording (directory, tracks, manifest)
- ``manifest``: ``manifest.json`` schema and atomic writes
- ``repair``: finalize an interrupted recording; ``cli``: ``ferry record ...``

The composite (``ferry record compose``, and live as HLS):

- ``compose_sources``: a track file decoded on its own thread (growing files: ``TailFile``)
- ``compose_layout``: where tiles go; ``compose_draw``: drawing on YUV 4:2:0 with numpy
- ``compose_audio``: the mix's limiter and the active speaker
- ``compose_scene``: the composite frame by frame, placed by the manifest's wall clock
- ``captions``: ``transcript.json`` -> mov_text; ``compose``: the MP4
- ``hls``: the live HLS renderer process (``python -m recorder.hls``)
"""
