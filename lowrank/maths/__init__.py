"""Shared mathematics of the analyses: pure functions on arrays (no models, no files)."""
