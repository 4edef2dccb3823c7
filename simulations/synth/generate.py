"""Draw a synthetic population from ``SynthStats``: N users, M items, streamed in chunks of users.

Per user: a source user's activity profile (interactions, active days, start day, first-day share;
each source user used once per copy of the source, so a source-sized population has its profiles),
its interaction count jittered so a large population is not made of a few hundred clones; a taste
vector from the fitted Gaussian. Per item: a bias at its popularity quantile and a factor vector drawn
given that bias. A user's items are a Plackett-Luce draw without replacement from softmax(b + u . v)
(Gumbel top-k); the biases are first calibrated so that the realized popularity follows the source's
Lorenz curve. Active days follow the source's first-return and later-return day-gap histograms;
items are placed in time popular first with Gaussian noise ``order_spread`` (MovieLens users rate the
films everyone knows first), the noise fitted on the source. Every item is given to one user drawn by
taste (the best of a few candidates), as every MovieLens item has at least one rating, so a CSV of a
large enough population holds exactly M items.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from fedrec.common.datasets import Interactions, from_raw
from fedrec.common.errors import FedrecError
from fedrec.common.files import writable_dir
from fedrec.common.memory import require_memory
from fedrec.simulations.retention.gaps import GapHistogram
from fedrec.simulations.retention.observed import SECONDS_PER_DAY
from fedrec.simulations.synth.factors import RANKS
from fedrec.simulations.synth.model import SynthStats

CHUNK_USERS = 1024  # fixed, so that the output depends on the seed and sizes only
PILOT_USERS = 1000
CALIBRATION_ROUNDS = 6
COUNT_JITTER = 0.1  # sd of the log-normal factor on a resampled user's interaction count
MIN_ITEMS = 10
OWNER_CANDIDATES = 64
_ITEMS, _USERS, _PILOT, _CHUNK, _OWNERS = 1, 2, 3, 4, 5  # independent random streams


@dataclass(frozen=True)
class Population:
    """Everything drawn before the interactions: per-item and per-user parameters."""

    item_bias: np.ndarray  # [M] calibrated
    item_factors: np.ndarray  # [M, rank]
    item_rating: np.ndarray  # [M] item offset of the latent rating score
    item_ids: np.ndarray  # [M] original ids: a random permutation of 1..M, so ids say nothing of popularity
    user_factors: np.ndarray  # [N, rank]
    user_rating: np.ndarray  # [N]
    interactions: np.ndarray  # [N]
    active_days: np.ndarray  # [N]
    start_day: np.ndarray  # [N]
    first_day_share: np.ndarray  # [N]
    rating_cuts: np.ndarray  # thresholds of the latent score between rating levels
    owner: np.ndarray  # [M] the user each item is guaranteed to reach (-1: none has room)
    order_spread: float
    seed: int

    @property
    def n_users(self) -> int:
        return len(self.interactions)

    @property
    def n_items(self) -> int:
        return len(self.item_bias)


@dataclass(frozen=True)
class Chunk:
    users: np.ndarray  # int64 user ids (1-based), grouped by user, in time order within a user
    items: np.ndarray  # int64 item ids
    timestamps: np.ndarray  # int64 unix seconds
    ratings: np.ndarray  # int64 rating levels


def peak_bytes(n_users: int, n_items: int) -> int:
    """An upper estimate of the generator's peak memory: per user its parameters and their temporaries
    (factors of the largest rank), per item the calibration's [pilot users, items] float64 arrays and the
    owner draw's [items, candidates, rank] block. The CSV streams, so interactions add no more than a chunk."""
    rank = max(RANKS)
    per_user = 8 * (3 * rank + 12)
    per_item = 8 * (8 * PILOT_USERS + OWNER_CANDIDATES * (rank + 3) + 4 * CHUNK_USERS)
    return n_users * per_user + n_items * per_item


def check_sizes(n_users: int, n_items: int) -> None:
    if n_users < 1:
        raise FedrecError(f"--users must be at least 1, got {n_users}")
    if n_items < MIN_ITEMS:
        raise FedrecError(f"--items must be at least {MIN_ITEMS}, got {n_items}")
    require_memory(
        peak_bytes(n_users, n_items), f"a population of {n_users} users x {n_items} items (--users, --items)"
    )


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def target_shares(stats: SynthStats, n_items: int) -> np.ndarray:
    """Share of interactions of each of ``n_items`` items (ascending), read off the source's Lorenz curve."""
    grid = np.arange(len(stats.lorenz)) / (len(stats.lorenz) - 1)
    return np.diff(np.interp(np.arange(n_items + 1) / n_items, grid, stats.lorenz))


def _items(stats: SynthStats, n_items: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    taste = stats.taste
    source_rank = (np.arange(len(taste.bias_quantiles)) + 0.5) / len(taste.bias_quantiles)
    bias = np.interp((np.arange(n_items) + 0.5) / n_items, source_rank, taste.bias_quantiles)
    design = np.stack([np.ones(n_items), bias, bias**2], axis=1)
    factors = design @ taste.item_coef + rng.standard_normal((n_items, taste.rank)) @ taste.item_chol.T
    z = (bias - taste.bias_quantiles.mean()) / taste.bias_quantiles.std()
    rating = stats.ratings.item_slope * z + rng.normal(0.0, stats.ratings.item_sd, n_items)
    return bias, factors, rating


def _users(stats: SynthStats, n_users: int, n_items: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    prof = stats.profiles
    reps = -(-n_users // len(prof.interactions))  # every source user once per full copy: no resampling noise
    source = np.concatenate([rng.permutation(len(prof.interactions)) for _ in range(reps)])[:n_users]
    cap = max(3, int(stats.max_user_share * n_items))
    floor = min(int(prof.interactions.min()), cap)
    jitter = np.exp(rng.normal(0.0, COUNT_JITTER, n_users))
    counts = np.clip(np.rint(prof.interactions[source] * jitter), floor, cap).astype(np.int64)
    start = prof.start_day[source]
    days = np.minimum.reduce([prof.active_days[source], counts, stats.window_days - start + 1])
    taste = stats.taste
    return dict(
        user_factors=taste.strength
        * (taste.user_mean + rng.standard_normal((n_users, taste.rank)) @ taste.user_chol.T),
        user_rating=rng.normal(0.0, stats.ratings.user_sd, n_users),
        interactions=counts,
        active_days=days,
        start_day=start,
        first_day_share=prof.first_day_share[source],
    )


def _inclusion(logits: np.ndarray, picks: np.ndarray, iterations: int = 12) -> np.ndarray:
    """P(item drawn) for a without-replacement draw of ``picks`` items, by the conditional-Poisson
    approximation: 1 - exp(-lam p_i), lam solving sum_i (1 - exp(-lam p_i)) = picks (Newton from below)."""
    p = np.exp(log_softmax(logits, axis=1))
    lam = picks.astype(np.float64)[:, None].copy()
    for _ in range(iterations):
        e = np.exp(-lam * p)
        lam += (picks[:, None] - (1.0 - e).sum(axis=1, keepdims=True)) / (p * e).sum(axis=1, keepdims=True)
    return 1.0 - np.exp(-lam * p)


def _owners(
    user_factors: np.ndarray, item_factors: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each item, the candidate user (of a few drawn at random) with the highest affinity plus Gumbel noise;
    an item whose owner already holds as many owned items as interactions gets none (-1)."""
    n_items = len(item_factors)
    candidates = rng.integers(len(user_factors), size=(n_items, OWNER_CANDIDATES))
    affinity = np.einsum("icd,id->ic", user_factors[candidates], item_factors) + rng.gumbel(size=candidates.shape)
    owner = candidates[np.arange(n_items), affinity.argmax(axis=1)]
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], owner[order])
    rank_in_owner = np.empty(n_items, dtype=np.int64)
    rank_in_owner[order] = np.arange(n_items) - starts
    return np.where(rank_in_owner < counts[owner], owner, -1)


def _calibrate(
    stats: SynthStats, bias: np.ndarray, factors: np.ndarray, n_items: int, seed: int, forced: np.ndarray
) -> np.ndarray:
    """Shift the item biases until a pilot population's expected item counts follow the target shares
    (less ``forced``, each item's share of interactions guaranteed by its owner).

    Without replacement a heavy user runs out of popular items, which flattens popularity; the
    shift undoes that. The pilot is its own random stream, so calibration does not depend on N."""
    pilot = _users(stats, PILOT_USERS, n_items, _rng(seed, _PILOT))
    shares = target_shares(stats, n_items)
    drawn = np.maximum(shares - forced, 0.1 * shares)  # what the draw must add to the guaranteed interactions
    target = drawn / drawn.sum() * pilot["interactions"].sum()
    affinity = pilot["user_factors"] @ factors.T
    bias = bias.copy()
    for _ in range(CALIBRATION_ROUNDS):
        expected = _inclusion(bias + affinity, pilot["interactions"]).sum(axis=0)
        bias += np.log(target / expected)
    return bias - bias.mean()


def _rating_cuts(stats: SynthStats, item_rating: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Latent-score thresholds that give each rating level its source share over interactions."""
    n = 200_000
    items = rng.choice(n_items, size=n, p=target_shares(stats, n_items))
    score = item_rating[items] + rng.normal(0.0, stats.ratings.user_sd, n) + rng.normal(0.0, stats.ratings.noise_sd, n)
    return np.quantile(score, np.cumsum(stats.ratings.shares)[:-1])


def population(stats: SynthStats, n_users: int, n_items: int, seed: int) -> Population:
    check_sizes(n_users, n_items)
    rng = _rng(seed, _ITEMS)
    bias, factors, rating = _items(stats, n_items, rng)
    cuts = _rating_cuts(stats, rating, n_items, rng)
    ids = rng.permutation(n_items) + 1
    users = _users(stats, n_users, n_items, _rng(seed, _USERS))
    owner = _owners(users["user_factors"], factors, users["interactions"], _rng(seed, _OWNERS))
    forced = (owner >= 0) / float(users["interactions"].sum())
    bias = _calibrate(stats, bias, factors, n_items, seed, forced)
    return Population(
        item_bias=bias,
        item_factors=factors,
        item_rating=rating,
        item_ids=ids,
        rating_cuts=cuts,
        order_spread=stats.order_spread,
        seed=seed,
        owner=owner,
        **users,
    )


def _truncated_gaps(hist: GapHistogram, room: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Gaps from ``hist`` conditioned on gap <= room (room >= 1): a user's later days must fit the window."""
    cdf = hist.cdf
    top = cdf[np.clip(room, 1, len(cdf)) - 1]
    gaps = np.searchsorted(cdf, uniforms * top, side="right") + 1
    return np.minimum(gaps, np.maximum(room, 1))


def _day_offsets(stats: SynthStats, start: np.ndarray, days: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[users, max days] active days after the dataset's first day (columns past a user's count unused)."""
    offsets = np.zeros((len(start), int(days.max())), dtype=np.int64)
    offsets[:, 0] = start
    for k in range(1, offsets.shape[1]):
        live = days > k
        room = stats.window_days - offsets[live, k - 1] - (days[live] - 1 - k)
        hist = stats.gaps.first if k == 1 else stats.gaps.later
        offsets[live, k] = offsets[live, k - 1] + _truncated_gaps(hist, room, rng.random(int(live.sum())))
    return offsets


def _day_slots(counts: np.ndarray, days: np.ndarray, first_share: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Active-day index of each interaction: the first day's share, one on each later day, the rest at random."""
    first = np.clip(np.rint(first_share * counts), 1, counts - (days - 1)).astype(np.int64)
    slot = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    first_r, days_r = np.repeat(first, counts), np.repeat(days, counts)
    later = np.maximum(days_r - 1, 1)
    spread = 1 + np.floor(rng.random(len(slot)) * later).astype(np.int64)
    return np.where(slot < first_r, 0, np.where(slot < first_r + days_r - 1, slot - first_r + 1, spread))


def _chunk(stats: SynthStats, pop: Population, lo: int, hi: int) -> Chunk:
    rng = _rng(pop.seed, _CHUNK, lo // CHUNK_USERS)
    counts = pop.interactions[lo:hi]
    n_local = hi - lo
    scores = (pop.item_bias + pop.user_factors[lo:hi] @ pop.item_factors.T).astype(np.float32)
    scores += rng.gumbel(size=scores.shape).astype(np.float32)
    owned = (pop.owner >= lo) & (pop.owner < hi)
    scores[pop.owner[owned] - lo, np.flatnonzero(owned)] = np.inf  # drawn first, within the user's count
    k = int(counts.max())
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < pop.n_items else np.tile(np.arange(k), (n_local, 1))
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    drawn = np.arange(k)[None, :] < counts[:, None]
    user = np.repeat(np.arange(n_local), counts)
    items = top[drawn]
    z = (pop.item_bias - pop.item_bias.mean()) / pop.item_bias.std()
    key = -z[items] + pop.order_spread * rng.standard_normal(len(items))
    days = pop.active_days[lo:hi]
    offsets = _day_offsets(stats, pop.start_day[lo:hi], days, rng)
    slots = _day_slots(counts, days, pop.first_day_share[lo:hi], rng)
    stamps = (stats.first_day + offsets[user, slots]) * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY, len(items))
    by_key, by_time = np.lexsort((key, user)), np.lexsort((stamps, user))
    items, stamps = items[by_key], stamps[by_time]
    score = pop.user_rating[lo:hi][user] + pop.item_rating[items] + rng.normal(0.0, stats.ratings.noise_sd, len(items))
    levels = stats.ratings.levels[np.searchsorted(pop.rating_cuts, score)]
    return Chunk(
        users=user + lo + 1,
        items=pop.item_ids[items],
        timestamps=stamps.astype(np.int64),
        ratings=levels.astype(np.int64),
    )


def chunks(stats: SynthStats, pop: Population) -> Iterator[Chunk]:
    for lo in range(0, pop.n_users, CHUNK_USERS):
        yield _chunk(stats, pop, lo, min(lo + CHUNK_USERS, pop.n_users))


def synthesize(stats: SynthStats, n_users: int, n_items: int, seed: int) -> Interactions:
    """The whole population in memory (tests, benchmarks); ``write_csv`` streams it instead."""
    return interactions(stats, population(stats, n_users, n_items, seed))


def interactions(stats: SynthStats, pop: Population) -> Interactions:
    n_users, n_items, seed = pop.n_users, pop.n_items, pop.seed
    parts = list(chunks(stats, pop))
    cat = {f: np.concatenate([getattr(c, f) for c in parts]) for f in ("users", "items", "timestamps", "ratings")}
    return from_raw(
        f"synth-{n_users}x{n_items}-s{seed}",
        cat["users"],
        cat["items"],
        cat["timestamps"],
        cat["ratings"].astype(np.float32),
    )


def check_out(out: Path) -> None:
    if out.suffix != ".csv":
        raise FedrecError(f"{out}: --out must end in .csv (the generic dataset format)")
    if not out.parent.exists():
        raise FedrecError(f"{out.parent}: directory does not exist")
    if out.is_dir():
        raise FedrecError(f"{out}: is a directory (--out names the CSV file to write)")
    writable_dir(out.parent, "--out")  # before the fit: a minute of work must not end in a write error


def write_csv(stats: SynthStats, n_users: int, n_items: int, seed: int, out: str | Path) -> int:
    """Write user,item,timestamp,rating rows chunk by chunk; returns the number of interactions."""
    out = Path(out)
    check_out(out)
    pop = population(stats, n_users, n_items, seed)
    total = 0
    with out.open("w", newline="") as fh:
        csv.writer(fh).writerow(["user", "item", "timestamp", "rating"])
        for c in chunks(stats, pop):
            np.savetxt(fh, np.column_stack([c.users, c.items, c.timestamps, c.ratings]), fmt="%d", delimiter=",")
            total += len(c.items)
    return total
