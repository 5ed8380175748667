"""Ferry: media/transport."""
