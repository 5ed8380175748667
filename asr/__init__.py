"""Ferry: asr."""
