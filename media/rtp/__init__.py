"""Ferry: media/rtp."""
