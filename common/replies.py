"""What a device's reply may carry beside the global parameters: a declared allow-list per mechanism.

Under DP every key a private reply carries is a function of public facts alone: the number of
devices that flipped heads this round and trained (the weight: each device counts once, so a reply
does not reveal how long a history is), those that sat the round out at their budget, the fixed
number of steps, and each device's epsilon, which follows from the public noise, sample rate and steps
and from how many rounds it took, i.e. from its participation coins. The training loss and the
on-device rank of a held-out item depend on the user's data: only non-private replies carry them.
``fedrec audit`` checks every reply's keys in ``wire.jsonl`` against this list.
"""

from __future__ import annotations

# Under ``distributed`` a reply's arrays are a sum of noisy shares, not parameters: the clipped gradient
# sum of the item table (named as the parameter), or in round 1 the item histogram under this name.
SHARED_COUNTS = "item_counts"

TRAIN_PRIVATE = ("num-examples", "devices", "refused", "steps-max", "epsilon-max", "epsilons")
TRAIN_PLAIN = (*TRAIN_PRIVATE, "train-loss")
EVALUATE_PRIVATE = ("num-examples",)
EVALUATE_PLAIN = ("num-examples", "hr@10", "ndcg@10")


def device_weight(private: bool, examples: int) -> int:
    """A trained device's weight in the mean of the global parameters: under DP each device counts once
    (the weight then says nothing of how long its history is); without DP its number of examples (FedAvg)."""
    return 1 if private else examples


def allowed_keys(kind: str, private: bool) -> tuple[str, ...]:
    """``kind`` is "train" or "evaluate"."""
    if kind == "train":
        return TRAIN_PRIVATE if private else TRAIN_PLAIN
    return EVALUATE_PRIVATE if private else EVALUATE_PLAIN


def train_metrics(
    weight: float, devices: int, refused: int, steps: int, epsilons: list[float], private: bool, loss: float = 0.0
) -> dict:
    """A node's train-reply metrics, cut to the mechanism's allow-list (``loss`` is the mean train loss)."""
    metrics = {
        "num-examples": weight,
        "train-loss": loss,
        "devices": devices,
        "refused": refused,
        "steps-max": steps,
        "epsilon-max": max(epsilons, default=0.0),
        "epsilons": [float(e) for e in epsilons],
    }
    return {k: metrics[k] for k in allowed_keys("train", private)}
