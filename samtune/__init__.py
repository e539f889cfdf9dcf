"""samtune: schedule search for sharpness-aware minimization."""

__version__ = "0.1.0"
