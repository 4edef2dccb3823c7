"""Synthetic populations fitted to a dataset's statistics (ML-100K): see docs/synth.md."""
