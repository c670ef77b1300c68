"""tuneloop: user feedback in, a better model out, never a worse one live."""

__version__ = "0.1.0"
