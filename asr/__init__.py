"""Ferry: asr - live captions for published audio tracks (DESIGN §10, §12).

One `CaptionEngine` per server loads a recognizer backend (faster-whisper or Vosk);
`CaptionEngine.open_track` returns a `TrackCaptioner`, a `media.routing.sink.PacketSink`
that turns a track's Opus RTP packets into `Caption`s: decode path (jitter buffer,
FEC, PLC) at 16 kHz -> webrtcvad segments -> recognizer jobs on a bounded worker
pool -> captions timed by RTP timestamps mapped through RTCP sender reports.

The contract the server codes against is `asr.api` (`Caption`, `CaptionConfig`,
`CaptionsUnavailable`) plus `asr.engine.CaptionEngine`.
"""
