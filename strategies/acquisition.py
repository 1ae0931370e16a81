"""Acquisition strategies: which k unlabeled samples join the training set next.

A strategy declares the pool outputs it needs and is a plain function from those
outputs, the number k to pick and a seeded generator to k pool positions.  The
engine computes only what is declared (batched, under ``torch.inference_mode()``)
and maps positions back to dataset indices, so a strategy never touches models,
devices or Ray:

    from strategies.acquisition import register

    @register("my_strategy", needs=("probs",))
    def my_strategy(outputs, k, rng):
        # outputs.probs: float tensor [N, C] over the unlabeled pool, in pool order
        # rng: numpy Generator seeded per (seed, round)
        return ...  # k distinct positions in 0..N-1

Extra keyword parameters with defaults become the strategy's config parameters
(``acquisition: {name: my_strategy, temperature: 2.0}``).  A strategy that declares
``mc_probs`` must have an ``mc_samples`` parameter: the engine reads the number of
stochastic passes T from it.

Where: the engine keeps the outputs on the training device.  A strategy registered with
``on_device=True`` (every built-in) gets them there, ranks there (``top_k``, torch
sorting and sampling) and may return its positions as a tensor on that device: only the
k picked positions reach the host.  Any other strategy gets CPU tensors, as it always
has, and may return a list, a NumPy array or a tensor.

Memory: the engine keeps only the declared outputs, so a strategy over a pool of N
samples with C classes and D-dimensional embeddings holds N·C or N·D numbers, never
N·C·D; the built-ins below keep to that (``badge`` uses inner-product identities,
``coreset`` computes distances in blocks).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import StrategyError
from engine.schema.catalogue import ACQUISITION_STRATEGIES
from engine.schema.registry import Interval

# What a strategy may declare in ``needs``; each is a tensor on the CPU (on the training
# device for strategies registered with on_device=True).  All but
# ``labeled_embeddings`` are over the unlabeled pool, in pool order.
POOL_OUTPUTS = {
    "probs": "softmax class probabilities, float [N, C]",
    "logits": "pre-softmax scores, float [N, C]",
    "embeddings": "penultimate-layer features (the input of the last linear layer), float [N, D]",
    "labeled_embeddings": "penultimate-layer features of the labeled set, in ascending pool position, float [L, D]",
    "mc_probs": "softmax probabilities of T passes with dropout active (all else in eval mode), float [T, N, C]; "
    "T is the strategy's `mc_samples` parameter, and the model needs model.dropout > 0",
}


def register(
    name: str,
    needs: tuple[str, ...] = (),
    constraints: dict | None = None,
    *,
    on_device: bool = False,
    override: bool = False,
    score=None,
):
    """Register ``fn(outputs, k, rng, **params) -> positions`` under ``name``.

    ``on_device``: the function takes its outputs on the training device (a GPU when the
    trial has one) and works with torch there; False: CPU tensors.  ``override=True``
    replaces a registered strategy: its source then joins the trial id and the rows.
    ``score``: optional, ``score(outputs, **params) -> float [N]``, the strategy's own score
    of each unlabeled sample (higher: picked first), which a live project's query shows
    next to each id (docs/live.md); None for strategies without one (random, badge)."""
    needs = tuple(needs)
    unknown = [n for n in needs if n not in POOL_OUTPUTS]
    if unknown:
        raise ValueError(
            f"acquisition strategy {name!r} needs unknown pool output {unknown[0]!r}; known: {', '.join(POOL_OUTPUTS)}"
        )

    def wrap(fn):
        if "mc_probs" in needs and "mc_samples" not in inspect.signature(fn).parameters:
            raise TypeError(
                f"acquisition strategy {name!r} needs 'mc_probs', so it needs an 'mc_samples' parameter "
                "(the number of stochastic passes, with a default)"
            )
        return ACQUISITION_STRATEGIES.add(
            name, fn, constraints, override=override, needs=needs, on_device=on_device, score=score
        )

    return wrap


@dataclass
class PoolOutputs:
    """The declared outputs (see POOL_OUTPUTS); undeclared ones stay None."""

    n: int
    probs: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    labeled_embeddings: torch.Tensor | None = None
    mc_probs: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PoolOutputs:
        """The same outputs on ``device`` (a tensor already there is not copied)."""
        moved = {name: getattr(self, name) for name in POOL_OUTPUTS}
        return PoolOutputs(self.n, **{k: v if v is None else v.to(device) for k, v in moved.items()})


def pick(
    name: str, outputs: PoolOutputs, k: int, rng: np.random.Generator, params: dict, round_: int | None = None
) -> np.ndarray:
    """Run the registered strategy ``name``: its k positions as a checked int64 array.

    A strategy registered without ``on_device`` gets the outputs on the CPU; one with it
    gets them where they are, and only its k positions are copied to the host."""
    entry = ACQUISITION_STRATEGIES.get(name)
    if not entry.extra.get("on_device", False):
        outputs = outputs.to("cpu")
    return check_positions(entry.name, entry.fn(outputs, k, rng, **params), k, outputs.n, round_)


def check_positions(name: str, positions, k: int, n: int, round_: int | None = None) -> np.ndarray:
    """The strategy's answer as an int64 array, or a StrategyError naming the strategy, the
    round, what was expected and what came back."""
    where = f"The acquisition strategy {name!r}" + (f" in round {round_}" if round_ is not None else "")
    expected = f"expected {k} distinct integer positions in 0..{n - 1}"
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().numpy()
    try:
        positions = np.asarray(positions)
    except Exception:
        raise StrategyError(f"{where} broke its contract: {expected}, got {type(positions).__name__}") from None
    if positions.ndim != 1 or positions.shape[0] != k or positions.dtype.kind not in "iu":
        raise StrategyError(
            f"{where} broke its contract: {expected}, got an array of shape {positions.shape} and dtype {positions.dtype}"
        )
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise StrategyError(
            f"{where} broke its contract: {expected}, got positions from {positions.min()} to {positions.max()}"
        )
    if np.unique(positions).size != k:
        raise StrategyError(f"{where} broke its contract: {expected}, got {k - np.unique(positions).size} repeated")
    return positions.astype(np.int64)


def scores(name: str, outputs: PoolOutputs, params: dict) -> torch.Tensor | None:
    """The registered strategy's own score of each sample of ``outputs`` (float [N], higher:
    picked first), or None when it declares none."""
    score = ACQUISITION_STRATEGIES.get(name).extra.get("score")
    if score is None:
        return None
    if not ACQUISITION_STRATEGIES.get(name).extra.get("on_device", False):
        outputs = outputs.to("cpu")
    return torch.as_tensor(score(outputs, **params)).double()


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest scores, largest first; ties go to the lower position
    (deterministic): exactly the first k of a stable descending sort."""
    if k >= scores.shape[0]:
        return torch.sort(scores, descending=True, stable=True).indices[:k]
    # torch.topk finds the k-th largest value without sorting the pool (25x less time than
    # the sort on a 28k pool, measured on CPU); everything above it is in, and of the ties
    # at it, the lowest positions.  Then only the k picks are sorted.
    kth = torch.topk(scores, k).values[-1]
    above = torch.nonzero(~(scores <= kth)).squeeze(1)  # NaN counts as above, as topk and sort rank it
    tied = torch.nonzero(scores == kth).squeeze(1)[: k - above.shape[0]]
    chosen = torch.sort(torch.cat([above, tied])).values  # ascending positions: a stable sort keeps them
    if chosen.shape[0] != k:  # a NaN k-th value: the full sort decides
        return torch.sort(scores, descending=True, stable=True).indices[:k]
    return chosen[torch.sort(scores[chosen], descending=True, stable=True).indices]


@register("random", on_device=True)
def random(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> np.ndarray:
    """Passive online learning: k pool samples uniformly at random."""
    return rng.choice(outputs.n, size=k, replace=False)


def margin_score(outputs: PoolOutputs) -> torch.Tensor:
    """The negated gap between the two largest class probabilities, [N]."""
    # The runner-up as the max once the top class is masked: the same values as
    # topk(2, dim=1), which is 10x slower over few classes (measured on CPU).
    first, top = outputs.probs.max(1)  # [N]
    second = outputs.probs.scatter(1, top[:, None], float("-inf")).max(1).values  # [N]
    return second - first


@register("margin", needs=("probs",), on_device=True, score=margin_score)
def margin(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Smallest gap between the two largest class probabilities."""
    return top_k(margin_score(outputs), k)  # largest negated gap = smallest gap


# --- uncertainty --------------------------------------------------------------------------

# Rows per block where a score needs float64 temporaries: bounded memory on any pool.
CHUNK = 65536


def entropy_score(outputs: PoolOutputs) -> torch.Tensor:
    """Predictive entropy −Σ p·log p over the classes, [N] float64."""
    return torch.cat([torch.special.entr(p.double()).sum(1) for p in outputs.probs.split(CHUNK)])


@register("entropy", needs=("probs",), on_device=True, score=entropy_score)
def entropy(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Highest predictive entropy −Σ p·log p over the classes."""
    return top_k(entropy_score(outputs), k)


def least_confidence_score(outputs: PoolOutputs) -> torch.Tensor:
    """The negated top-class probability, [N]."""
    return -outputs.probs.max(1).values


@register("least_confidence", needs=("probs",), on_device=True, score=least_confidence_score)
def least_confidence(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Lowest top-class probability (the least confident predictions)."""
    return top_k(least_confidence_score(outputs), k)


def bald_score(outputs: PoolOutputs, mc_samples: int = 20) -> torch.Tensor:
    """Mutual information between label and weights under MC dropout, [N] float64."""
    # I(y; θ) = H(E_t p_t) − E_t H(p_t): high where the passes disagree, not where each
    # pass is merely unsure.  mc_probs is [T, N, C]; blocks over N bound the temporaries.
    scores = []
    for p in outputs.mc_probs.split(CHUNK, dim=1):
        p = p.double()
        entropy_of_mean = torch.special.entr(p.mean(0)).sum(1)  # [b]
        mean_entropy = torch.special.entr(p).sum(2).mean(0)  # [b]
        scores.append(entropy_of_mean - mean_entropy)
    return torch.cat(scores)


@register(
    "bald", needs=("mc_probs",), constraints={"mc_samples": Interval(2, integer=True)}, on_device=True, score=bald_score
)
def bald(outputs: PoolOutputs, k: int, rng: np.random.Generator, mc_samples: int = 20) -> torch.Tensor:
    """Largest mutual information between label and weights under MC dropout (BALD); needs model.dropout > 0."""
    return top_k(bald_score(outputs, mc_samples), k)


# --- diversity ----------------------------------------------------------------------------


@register("badge", needs=("probs", "embeddings"), on_device=True)
def badge(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ seeding on gradient embeddings (p − onehot(argmax p)) ⊗ h (BADGE, Ash et al. 2020)."""
    # g_i = a_i ⊗ h_i with a_i = p_i − e_i is the last layer's loss gradient for the
    # predicted label; it has C·D entries, so it is never built:
    #   ||g_i||² = ||a_i||²·||h_i||²,   <g_i, g_j> = <a_i, a_j>·<h_i, h_j>,
    # and each pick needs one [N, C] and one [N, D] matrix-vector product.
    a = outputs.probs.float().clone()  # [N, C]
    a[torch.arange(a.shape[0], device=a.device), a.argmax(1)] -= 1.0
    h = outputs.embeddings.float()  # [N, D]
    sq_norm = a.square().sum(1).double() * h.square().sum(1).double()  # ||g_i||², [N]

    def sq_dist(j: int) -> torch.Tensor:  # ||g_i − g_j||² for every i, [N]
        inner = (a @ a[j]).double() * (h @ h[j]).double()
        return (sq_norm + sq_norm[j] - 2 * inner).clamp_min_(0)

    # The first center: the largest gradient (ties: the lower position), as in the
    # authors' code; then each next one drawn with probability ∝ D², the squared
    # distance to the nearest center so far (k-means++).
    picked = [int(torch.argmax(sq_norm))]
    nearest = sq_dist(picked[0])
    nearest[picked[0]] = 0
    while len(picked) < k:
        total = float(nearest.sum())
        if total > 0:
            cumulative = torch.cumsum(nearest, 0)
            j = int(
                torch.searchsorted(
                    cumulative, torch.tensor([rng.random() * total], dtype=torch.float64, device=a.device), right=True
                )
            )
            j = min(j, int(torch.nonzero(nearest).max()))  # rounding at the very top end
        else:  # every remaining sample coincides with a center: uniform among them
            rest = np.setdiff1d(np.arange(a.shape[0]), picked)
            j = int(rng.choice(rest))
        picked.append(j)
        nearest = torch.minimum(nearest, sq_dist(j))
        nearest[picked] = 0
    return picked


BLOCK = 2048  # rows per distance tile: a [BLOCK, BLOCK] float64 tile is 32 MiB


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [len(x), len(y)], in float64."""
    x, y = x.double(), y.double()
    return (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2 * x @ y.T).clamp_min_(0)


@register("coreset", needs=("embeddings", "labeled_embeddings"), on_device=True)
def coreset(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> list[int]:
    """k-center greedy on embeddings: each pick is farthest from the labeled set and earlier picks (Core-Set)."""
    # Sener & Savarese (2018).  Distances are computed in [block, block] tiles, so no
    # N x L matrix is ever held.  Ties go to the lower position.
    pool, labeled = outputs.embeddings, outputs.labeled_embeddings
    n, block = pool.shape[0], BLOCK
    # The squared distance to the nearest center, on the outputs' device.
    nearest = torch.full((n,), float("inf"), dtype=torch.float64, device=pool.device)
    for rows in range(0, n, block):
        for cols in range(0, labeled.shape[0], block):
            tile = _sq_dists(pool[rows : rows + block], labeled[cols : cols + block])
            nearest[rows : rows + block] = torch.minimum(nearest[rows : rows + block], tile.min(1).values)
    picked: list[int] = []
    while len(picked) < k:
        # No labeled set (never in a trial: round 1 is random): the first center at random.
        j = int(rng.integers(n)) if torch.isinf(nearest).all() else int(torch.argmax(nearest))
        picked.append(j)
        for rows in range(0, n, block):
            tile = _sq_dists(pool[rows : rows + block], pool[j : j + 1])[:, 0]
            nearest[rows : rows + block] = torch.minimum(nearest[rows : rows + block], tile)
        nearest[picked] = -1.0  # never picked twice, even among exact duplicates
    return picked
