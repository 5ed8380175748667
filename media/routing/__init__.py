"""Ferry: media/routing."""
