"""Retention simulator (docs/protocol.md, section 4): simulated long-term retention of every arm.

MovieLens holds no signal on how recommendations change whether users return, so this is a projection
under a stated user model, calibrated on the dataset's own return behaviour.
"""

from fedrec.simulations.retention.run import run_retention

__all__ = ["run_retention"]
