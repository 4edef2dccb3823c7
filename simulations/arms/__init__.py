"""Every arm turns a split into a dense score matrix [n_users, n_items]; one evaluator ranks them all."""

from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.arms.registry import CENTRAL_ARMS, central_fitters

__all__ = ["ArmResult", "CENTRAL_ARMS", "central_fitters"]
