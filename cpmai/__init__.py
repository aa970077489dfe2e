"""cpmai: take a validated model into production and keep it accountable there."""

__version__ = "0.1.0"
