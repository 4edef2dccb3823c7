"""How well a membership score separates members from non-members: AUC and TPR at a fixed low FPR.

Low-FPR TPR is the number that matters for privacy (Carlini et al. 2022): an attack that confidently
identifies a few members is a breach even when its AUC is near 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

FPRS = {"tpr@1%fpr": 0.01, "tpr@0.1%fpr": 0.001}


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(member score > non-member score), ties counted half: the Mann-Whitney U statistic, normalised."""
    u = stats.mannwhitneyu(members, non_members, alternative="two-sided").statistic
    return float(u / (len(members) * len(non_members)))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> float:
    """Share of members scored strictly above the threshold that at most ``fpr`` of non-members exceed."""
    ranked = np.sort(non_members)[::-1]
    allowed = int(np.floor(fpr * len(ranked)))  # non-members allowed above the threshold
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    return float(np.mean(members > threshold))


def attack_summary(members: np.ndarray, non_members: np.ndarray) -> dict:
    members, non_members = np.asarray(members, float), np.asarray(non_members, float)
    out = {"auc": auc(members, non_members)}
    for key, fpr in FPRS.items():
        out[key] = tpr_at_fpr(members, non_members, fpr)
    out["n_members"], out["n_non_members"] = len(members), len(non_members)
    return out
