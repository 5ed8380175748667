"""Ferry: signaling."""
