"""Ferry: recorder."""
