"""Ferry: media."""
