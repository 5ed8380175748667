"""Ferry: media/bwe."""
