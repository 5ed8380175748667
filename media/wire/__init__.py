"""Ferry: media/wire."""
