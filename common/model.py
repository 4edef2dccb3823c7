"""NeuMF (He et al. 2017) with a hard line between global (shared) and local (per-user) parameters.

One user table and one item table each hold the GMF and the MLP halves side by side, so that every
forward does exactly one lookup per table: Opacus' ghost clipping requires each embedding be called
once per forward. Parameters named ``user_emb.*`` are local: they never leave a device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedrec.common.memory import require_memory
from fedrec.common.model_names import is_model_path
from fedrec.common.recommender import Recommender, check_contract, model_class
from fedrec.common.settings import MAX_LAYERS, MAX_WIDTH, require, require_count

BUILT_IN = ("neumf", "mlp", "gmf")  # NeuMF and its two halves; any other kind is a class path (common/recommender.py)
LOCAL_PREFIX = "user_emb."
PRIOR = "item_prior"  # the state-dict key of the fixed per-item logit offset (ModelConfig.prior)
# Floats of the widest [users, items, width] block score_users builds at once: about 8 MB, so the block stays
# in cache between the tower's layers (a 256-user block of ML-100K was 3x slower, with the same scores).
SCORE_BLOCK = 1 << 21
TABLE_COPIES = 4  # weights, gradients and Adam's two moments
TABLES_CHECKED_ABOVE = 1 << 28


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; ``kind`` is 'neumf', 'mlp' (the seed's embedding-MLP), 'gmf', or a model of one's own
    named by where its class is (``module:Class``, ``file.py:Class``; docs/models.md), which reads the
    widths it wants from here and has ``gmf_dim + mlp_dim`` wide user rows."""

    kind: str = "neumf"
    gmf_dim: int = 64  # dims and item_bias: chosen by validation in bench/neumf_search.py
    mlp_dim: int = 64
    layers: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.0
    item_bias: bool = True  # one extra item-table column added to the logit (a learned item bias)
    # A fixed per-item logit offset (the DP popularity prior): a buffer, so it takes no clipping budget
    # and no noise, and never trains; whoever releases the item histogram writes it (NeuMF.set_prior).
    prior: bool = False
    init_std: float = 0.01

    def __post_init__(self) -> None:
        require(
            self.kind in BUILT_IN or is_model_path(self.kind),
            "kind",
            f"must be neumf, mlp, gmf or a model class as module:Class or file.py:Class, not {self.kind!r}",
        )
        require(not (self.custom and self.prior), "prior", "the popularity prior is NeuMF's (kind neumf, mlp or gmf)")
        require_count(self.gmf_dim, "gmf_dim", high=MAX_WIDTH)
        require_count(self.mlp_dim, "mlp_dim", high=MAX_WIDTH)
        require(bool(self.layers) or not self.uses_mlp, "layers", f"{self.kind} needs at least one hidden layer")
        require(len(self.layers) <= MAX_LAYERS, "layers", f"at most {MAX_LAYERS} layers, got {len(self.layers)}")
        require(
            all(1 <= width <= MAX_WIDTH for width in self.layers),
            "layers",
            f"widths must be in [1, {MAX_WIDTH}], got {self.layers}",
        )
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")

    @property
    def custom(self) -> bool:
        """A model of one's own: trained by the reference paths (Opacus per device), never the stacked ones."""
        return self.kind not in BUILT_IN

    @property
    def uses_gmf(self) -> bool:
        return self.kind in ("neumf", "gmf")

    @property
    def uses_mlp(self) -> bool:
        return self.kind in ("neumf", "mlp")

    @property
    def embedding_dim(self) -> int:
        if self.custom:
            return self.gmf_dim + self.mlp_dim
        return self.gmf_dim * self.uses_gmf + self.mlp_dim * self.uses_mlp


Linear = Callable[[str, torch.Tensor], torch.Tensor]  # applies the named layer ("tower.0", ..., "output") to x


def halves(config: ModelConfig, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The GMF and MLP halves of user or item rows; a half the model does not use is empty and never read."""
    g = config.gmf_dim if config.uses_gmf else 0
    return rows[..., :g], rows[..., g : config.embedding_dim]


def tower_layers(config: ModelConfig) -> list[str]:
    """The names of the tower's linear layers, in order (each followed by a ReLU, and a Dropout when set)."""
    if not config.uses_mlp:
        return []
    stride = 2 + (config.dropout > 0)
    return [f"tower.{stride * k}" for k in range(len(config.layers))]


def neumf_logits(
    config: ModelConfig,
    users: torch.Tensor,
    items: torch.Tensor,
    linear: Linear,
    first: torch.Tensor | None = None,
    dropout: float = 0.0,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """NeuMF's logit of each user row against each item row (``users`` [..., dim] and ``items`` [..., cols]
    of one shape, or broadcasting against each other when ``first`` is given): the MLP tower on the two MLP
    halves side by side with the GMF product, into the output layer, plus the item's learned bias column
    and its fixed ``prior`` (the popularity prior of each item, shaped as the logits or broadcasting).

    The one definition of the score, whatever holds the weights: ``linear`` applies a named layer (the
    module itself, so that Opacus' hooks see it, or every device's weights of a stack). ``first``, when
    given, is the first tower layer's output computed from the halves apart (``x_u W_u^T + x_i W_i^T + b``,
    the item side once for many users); otherwise ``linear`` runs that layer on the concatenated halves.
    """

    def activation(x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        return F.dropout(x, dropout) if dropout else x

    (u_gmf, u_mlp), (i_gmf, i_mlp) = halves(config, users), halves(config, items)
    parts = []
    if config.uses_mlp:
        names = tower_layers(config)
        x = linear(names[0], torch.cat([u_mlp, i_mlp], dim=-1)) if first is None else first
        for name in names[1:]:
            x = linear(name, activation(x))
        parts.append(activation(x))
    if config.uses_gmf:
        parts.append(u_gmf * i_gmf)
    out = linear("output", torch.cat(parts, dim=-1)).squeeze(-1)
    if config.item_bias:
        out = out + items[..., -1]
    return out if prior is None else out + prior


def check_tables_fit(n_users: int, n_items: int, config: ModelConfig) -> None:
    """Refuse embedding tables that cannot be held with their gradients and optimizer state (about four copies);
    both sizes come from the user (a dataset, a catalogue size, a width), so they can be anything."""
    table_bytes = 4 * (n_users + n_items) * (config.embedding_dim + 1)
    if table_bytes * TABLE_COPIES > TABLES_CHECKED_ABOVE:  # small models skip reading the machine's memory
        require_memory(
            table_bytes * TABLE_COPIES,
            f"a model of {n_users} users x {n_items} items x {config.embedding_dim} dimensions",
        )


class NeuMF(Recommender):
    """Scores (user, item) pairs with one logit; BCE with sampled negatives trains it."""

    item_prior: torch.Tensor | None  # [n_items] when config.prior: moves and saves with the module, never trained

    def __init__(self, n_users: int, n_items: int, config: ModelConfig = ModelConfig()):
        super().__init__(n_users, n_items, config)
        dim = config.embedding_dim
        check_tables_fit(n_users, n_items, config)
        self.user_emb = nn.Embedding(n_users, dim)
        # The item bias lives in the item table's last column so that a forward stays one lookup per table.
        self.item_emb = nn.Embedding(n_items, dim + int(config.item_bias))
        nn.init.normal_(self.user_emb.weight, std=config.init_std)
        nn.init.normal_(self.item_emb.weight, std=config.init_std)
        if config.item_bias:
            nn.init.zeros_(self.item_emb.weight[:, dim:])
        # None keeps the key out of the state dict: a model without a prior has no such key in its files.
        self.register_buffer(PRIOR, torch.zeros(n_items) if config.prior else None)
        head = 0
        if config.uses_mlp:
            tower: list[nn.Module] = []
            width = 2 * config.mlp_dim
            for out in config.layers:
                tower += [nn.Linear(width, out), nn.ReLU()]  # no inplace ReLU: ghost clipping needs it
                if config.dropout > 0:
                    tower.append(nn.Dropout(config.dropout))
                width = out
            self.tower = nn.Sequential(*tower)
            head += width
        if config.uses_gmf:
            head += config.gmf_dim
        self.output = nn.Linear(head, 1)

    def _layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.get_submodule(name)(x)

    def _logits(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        prior: torch.Tensor | None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dropout = self.config.dropout if self.training else 0.0
        return neumf_logits(self.config, users, items, self._layer, first, dropout, prior)

    def _prior_of(self, items: torch.Tensor) -> torch.Tensor | None:
        return None if self.item_prior is None else self.item_prior[items]

    @torch.no_grad()
    def set_prior(self, prior: torch.Tensor) -> None:
        """Write the fixed per-item offset (the released histogram's log-odds, ``dp_recipe.log_odds_prior``)."""
        if self.item_prior is None:
            raise ValueError("this NeuMF has no prior (ModelConfig.prior is false)")
        self.item_prior.copy_(prior)

    def _first_halves(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first tower layer's weight on the user half, on the item half, and its bias."""
        first = self.tower[0]
        assert isinstance(first, nn.Linear)
        m = self.config.mlp_dim
        return first.weight[:, :m], first.weight[:, m:], first.bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._logits(self.user_emb(users), self.item_emb(items), self._prior_of(items))

    def frozen_item_logits(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``logits(rows, owner, items)`` = ``forward`` for user rows ``rows[owner]`` against ``items`` ([N, k]),
        with every item-side term computed once: a refit that moves only user rows against a frozen item
        table and tower then skips the item half of the first layer on every step."""
        with torch.no_grad():
            item_rows = self.item_emb.weight.detach()
            if self.config.uses_mlp:
                w_u, w_i, b = (t.detach() for t in self._first_halves())
                item_first = halves(self.config, item_rows)[1] @ w_i.T + b

        def logits(rows: torch.Tensor, owner: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            first = None
            if self.config.uses_mlp:
                first = (halves(self.config, rows)[1] @ w_u.T)[owner][:, None, :] + item_first[items]
            return self._logits(rows[owner][:, None, :], item_rows[items], self._prior_of(items), first)

        return logits

    @torch.no_grad()
    def score_users(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """[len(users), n_items] logits for every item, without building a pair batch per item; ``chunk``
        users at a time (default: as many as fit in ``SCORE_BLOCK``)."""
        if chunk is None:
            width = self.config.layers[0] if self.config.uses_mlp else self.config.gmf_dim
            chunk = max(1, SCORE_BLOCK // (self.n_items * width))
        was_training = self.training
        self.eval()
        item_rows = self.item_emb(torch.arange(self.n_items))
        if self.config.uses_mlp:
            w_u, w_i, b = self._first_halves()
            item_first = (halves(self.config, item_rows)[1] @ w_i.T)[None, :, :]
        rows = []
        for start in range(0, len(users), chunk):
            user_rows = self.user_emb(users[start : start + chunk])
            first = None
            if self.config.uses_mlp:
                first = (halves(self.config, user_rows)[1] @ w_u.T)[:, None, :] + item_first + b
            rows.append(self._logits(user_rows[:, None, :], item_rows[None, :, :], self.item_prior, first))
        self.train(was_training)
        return torch.cat(rows)


def build_model(n_users: int, n_items: int, config: ModelConfig) -> Recommender:
    """The model ``config.kind`` names: NeuMF for the built-in kinds, else the class it points to."""
    if not config.custom:
        return NeuMF(n_users, n_items, config)
    model = model_class(config.kind)(n_users, n_items, config)
    check_contract(model, n_users, n_items, config)
    return model


def from_pretrained(gmf: NeuMF, mlp: NeuMF, config: ModelConfig, alpha: float = 0.5) -> NeuMF:
    """NeuMF initialised from a trained GMF-only and MLP-only model (He et al. 2017, section 3.4.1).

    Embedding halves and the tower are copied; the output layer weighs the GMF head by ``alpha`` and the
    MLP head by ``1 - alpha``, item biases likewise.
    """
    if config.kind != "neumf" or gmf.config.kind != "gmf" or mlp.config.kind != "mlp":
        raise ValueError("from_pretrained joins a 'gmf' and an 'mlp' model into a 'neumf' one")
    model = NeuMF(gmf.n_users, gmf.n_items, config)
    g, m = config.gmf_dim, config.mlp_dim
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.cat([gmf.user_emb.weight, mlp.user_emb.weight], dim=1))
        item = [gmf.item_emb.weight[:, :g], mlp.item_emb.weight[:, :m]]
        if config.item_bias:
            item.append(alpha * gmf.item_emb.weight[:, g:] + (1 - alpha) * mlp.item_emb.weight[:, m:])
        model.item_emb.weight.copy_(torch.cat(item, dim=1))
        model.tower.load_state_dict(mlp.tower.state_dict())
        # forward concatenates [tower output, GMF product]: the output weight follows that order.
        model.output.weight.copy_(torch.cat([(1 - alpha) * mlp.output.weight, alpha * gmf.output.weight], dim=1))
        model.output.bias.copy_(alpha * gmf.output.bias + (1 - alpha) * mlp.output.bias)
    return model


def is_dense(name: str) -> bool:
    """A parameter of NeuMF's tower or output layer (neither embedding table)."""
    return name.startswith(("tower.", "output."))


def is_local(name: str) -> bool:
    return name.startswith(LOCAL_PREFIX)


def global_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a device may share: everything but its user embedding."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not is_local(k)}


def local_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_local(k)}


def global_names(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not is_local(k)]
