"""What a model must be for fedrec to train it in every arm: the contract a model brings, and its loading.

A model is an ``nn.Module`` subclass of ``Recommender`` built as ``Model(n_users, n_items, config)`` with
``config`` the arm's ``ModelConfig`` (its widths are the model's to read). fedrec relies on three things:

* ``user_emb``: an ``nn.Embedding(n_users, config.embedding_dim)``. Its rows are the only local parameters:
  a device keeps its own row in its store and never sends it; every other parameter is shared.
* ``item_emb``: an ``nn.Embedding(n_items, width)``, the item table. Without DP the federated arm averages
  its rows over the examples that used them (``fedrec.common.item_rows``).
* ``forward(users, items)``: one logit per (user, item) pair, trained with BCE against sampled negatives.
  Under DP Opacus computes per-record gradients, so every layer must be one Opacus supports (``nn.Linear``,
  ``nn.Embedding``, ``nn.LayerNorm``, ...), each called once per forward.

``score_users`` has a default (``forward`` over the whole catalogue) that a model may replace by a faster
one with the same scores. Besides the built-in kinds (``neumf``, ``mlp``, ``gmf``: ``fedrec.common.model``)
a model is named in the settings by where its class is, ``package.module:Class`` or ``path/to/file.py:Class``,
so that every process of a run (Ray's workers, a deployed device) finds the same class. Loading a class runs
its module's code: a deployed device loads only the models its owner allowed (``DevicePolicy.allow_models``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedrec.common.errors import FedrecError

if TYPE_CHECKING:
    from fedrec.common.model import ModelConfig

SCORE_PAIRS = 1 << 20  # (user, item) pairs per forward in the default score_users


class Recommender(nn.Module):
    """The base of every model fedrec trains (see the module docstring for the contract)."""

    user_emb: nn.Embedding
    item_emb: nn.Embedding

    def __init__(self, n_users: int, n_items: int, config: ModelConfig):
        super().__init__()
        self.n_users, self.n_items, self.config = n_users, n_items, config

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), n_items] logits of every item, in eval mode."""
        was_training = self.training
        self.eval()
        chunk = max(1, SCORE_PAIRS // self.n_items)
        items = torch.arange(self.n_items)
        rows = [
            self(block.repeat_interleave(self.n_items), items.repeat(len(block))).reshape(len(block), self.n_items)
            for block in users.split(chunk)
        ]
        self.train(was_training)
        return torch.cat(rows) if rows else torch.zeros(0, self.n_items)


def model_class(kind: str) -> type[Recommender]:
    """The class ``kind`` names (``module:Class`` or ``file.py:Class``, as ModelConfig checks); a clear error
    when it cannot be loaded."""
    where, _, name = kind.rpartition(":")
    try:
        module = _load_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
    except FedrecError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module may fail in any way while it loads
        raise FedrecError(f"model {kind!r}: cannot load {where}: {type(exc).__name__}: {exc}") from None
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, Recommender)):
        raise FedrecError(f"model {kind!r}: {where} has no Recommender subclass named {name}")
    return found


def _load_file(path: Path) -> ModuleType:
    """A model file as a module, once per process (its name is derived from its absolute path)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FedrecError(f"{path}: no such model file")
    name = "fedrec_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``state`` into ``model``, or one line naming the first parameter that differs: weights trained with
    another model's code (a model file changed since the run, another kind or width)."""
    own = model.state_dict()
    for name in sorted(set(own) | set(state)):
        if name not in own or name not in state or own[name].shape != state[name].shape:
            given = tuple(state[name].shape) if name in state else "absent"
            expected = tuple(own[name].shape) if name in own else "absent"
            kind = getattr(getattr(model, "config", None), "kind", type(model).__name__)
            raise FedrecError(
                f"model {kind!r}: the weights do not fit its code ({name}: {given} in the weights, {expected} in "
                "the model); was the model changed since the run?"
            )
    model.load_state_dict(state)


def check_contract(model: nn.Module, n_users: int, n_items: int, config: ModelConfig) -> None:
    """Refuse a model whose tables break the contract, before any of its parameters is trained or sent."""
    user, item = getattr(model, "user_emb", None), getattr(model, "item_emb", None)
    if not isinstance(user, nn.Embedding) or tuple(user.weight.shape) != (n_users, config.embedding_dim):
        raise FedrecError(
            f"model {config.kind!r}: user_emb must be an nn.Embedding({n_users}, {config.embedding_dim}), "
            "config.embedding_dim wide: the one local table"
        )
    if not isinstance(item, nn.Embedding) or item.weight.shape[0] != n_items:
        raise FedrecError(f"model {config.kind!r}: item_emb must be an nn.Embedding over the {n_items} items")
