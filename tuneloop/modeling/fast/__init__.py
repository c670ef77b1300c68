"""The speed-ups that reach into transformers' internals, fenced: one switch, verified architectures (``fast_paths``)."""
