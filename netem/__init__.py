"""Ferry: netem."""
