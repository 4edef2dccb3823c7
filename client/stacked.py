"""What the stacked trainers (``batched_training``: DP-SGD, ``batched_plain``: no DP) share: a device's
round as they receive and return it, NeuMF's score over a stack of devices, and the element-wise
optimizer whose one instance over the stack is one optimizer per device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedrec.client.round_randomness import RoundRandomness
from fedrec.common.config import LocalTraining
from fedrec.common.errors import FedrecError
from fedrec.common.model import NeuMF, neumf_logits, tower_layers

USER, ITEM = "user_emb.weight", "item_emb.weight"


@dataclass(frozen=True)
class DeviceWork:
    """One device's round inputs, as the device round reads them from its store (examples already built,
    negatives included; the budget already checked)."""

    items: torch.Tensor  # [N, 1+k] item groups, positive first
    labels: torch.Tensor  # [N, 1+k] 0/1
    user_row: torch.Tensor  # [1, dim] the device's local user embedding
    randomness: RoundRandomness  # where its sampling, negatives and noise come from
    rows: dict[str, torch.Tensor] = field(default_factory=dict)  # other device state its mechanism keeps


@dataclass(frozen=True)
class DeviceTrained:
    state: dict[str, torch.Tensor]  # global parameters after local training
    user_row: torch.Tensor  # [1, dim] to write back to the device store
    num_examples: int
    loss: float
    steps: int


class StackedNeuMF:
    """NeuMF's score (``neumf_logits``) for a stack of devices, each with its own weights, keeping what
    ghost clipping needs: each linear layer's input and the loss gradient at its output."""

    def __init__(self, model: NeuMF):
        self.config = model.config
        self.linears = [*tower_layers(model.config), "output"]
        self._check_against(NeuMF(1, model.n_items, model.config))

    def _check_against(self, model: NeuMF) -> None:
        """Refuse a NeuMF whose forward this one does not reproduce (one tiny forward, weights of unit scale)."""
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
            items = torch.randint(0, model.n_items, (3, 5), generator=generator)
            labels = torch.zeros(items.shape)
            expected = F.binary_cross_entropy_with_logits(
                model(torch.zeros_like(items), items), labels, reduction="none"
            )
            params = {k: v[None] for k, v in model.state_dict().items()}
            users = params[USER][:, :, None, :].expand(1, *items.shape, -1)
            loss, _, _ = self(params, users, params[ITEM][:, items], labels[None])
        if not torch.allclose(loss[0], expected.sum(-1), rtol=1e-4, atol=1e-4):
            raise FedrecError(
                "batched training: its stacked forward no longer matches NeuMF.forward "
                "(client/stacked.py::StackedNeuMF must follow common/model.py)"
            )

    def __call__(
        self, params: Mapping[str, torch.Tensor], users: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Per-example losses [D, b] plus the inputs and outputs of the linear layers; ``users`` [D, b, G, dim]
        and ``rows`` [D, b, G, cols] are the looked-up embedding rows, one per (example, group position)."""
        d, b, g = rows.shape[:3]
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []

        def linear(name: str, x: torch.Tensor) -> torch.Tensor:
            """Every device's own layer ``name`` on its [b, G] examples, as one [D, b G, in] matmul."""
            x = x.reshape(d, b * g, -1)
            inputs.append(x.detach())
            h = torch.matmul(x, params[name + ".weight"].transpose(-1, -2)) + params[name + ".bias"][:, None, :]
            outputs.append(h)
            return h.reshape(d, b, g, -1)

        logits = neumf_logits(self.config, users, rows, linear)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1)
        return loss, inputs, outputs


def stacked_optimizer(params: list[torch.Tensor], training: LocalTraining) -> torch.optim.Optimizer:
    """The device optimizer of ``make_optimizer``; element-wise, so one over the stack is one per device."""
    if training.optimizer == "adam":
        return torch.optim.Adam(params, lr=training.lr, fused=True)
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=training.lr)
    raise FedrecError(f"local optimizer must be sgd or adam, not {training.optimizer!r}")


def padded(tensors: list[torch.Tensor], width: int, fill: float) -> torch.Tensor:
    out = torch.full((len(tensors), width, *tensors[0].shape[1:]), fill, dtype=tensors[0].dtype)
    for d, t in enumerate(tensors):
        out[d, : len(t)] = t
    return out
