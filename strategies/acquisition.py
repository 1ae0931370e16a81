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
(``acquisition: {name: my_strategy, temperature: 2.0}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from strategies.registry import Registry

# What a strategy may declare in ``needs``; each is a tensor over the unlabeled pool,
# in pool order, on the CPU.
POOL_OUTPUTS = {
    "probs": "softmax class probabilities, float [N, C]",
    "logits": "pre-softmax scores, float [N, C]",
    "embeddings": "penultimate-layer features (the input of the last linear layer), float [N, D]",
}

ACQUISITION_STRATEGIES = Registry("acquisition strategy", n_inputs=3)


def register(name: str, needs: tuple[str, ...] = (), constraints: dict | None = None):
    """Register ``fn(outputs, k, rng, **params) -> positions`` under ``name``."""
    needs = tuple(needs)
    unknown = [n for n in needs if n not in POOL_OUTPUTS]
    if unknown:
        raise ValueError(
            f"acquisition strategy {name!r} needs unknown pool output {unknown[0]!r}; known: {', '.join(POOL_OUTPUTS)}"
        )

    def wrap(fn):
        return ACQUISITION_STRATEGIES.add(name, fn, constraints, needs=needs)

    return wrap


@dataclass
class PoolOutputs:
    """The declared outputs over the unlabeled pool; undeclared ones stay None."""

    n: int
    probs: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


def check_positions(name: str, positions, k: int, n: int) -> np.ndarray:
    """The strategy's answer as an int64 array, or a clear error naming the strategy."""
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().numpy()
    positions = np.asarray(positions)
    if positions.ndim != 1 or positions.shape[0] != k or positions.dtype.kind not in "iu":
        raise RuntimeError(
            f"acquisition strategy {name!r} must return {k} integer positions, "
            f"got an array of shape {positions.shape} and dtype {positions.dtype}"
        )
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise RuntimeError(f"acquisition strategy {name!r} returned positions outside 0..{n - 1}")
    if np.unique(positions).size != k:
        raise RuntimeError(f"acquisition strategy {name!r} returned repeated positions")
    return positions.astype(np.int64)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest scores; ties go to the lower position (deterministic)."""
    # A stable descending sort, so equal scores keep pool order on every platform.
    return torch.sort(scores, descending=True, stable=True).indices[:k]


@register("random")
def random(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> np.ndarray:
    """Passive online learning: k pool samples uniformly at random."""
    return rng.choice(outputs.n, size=k, replace=False)


@register("margin", needs=("probs",))
def margin(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Smallest gap between the two largest class probabilities."""
    top2 = outputs.probs.topk(2, dim=1).values  # [N, 2]
    return top_k(top2[:, 1] - top2[:, 0], k)  # largest negated gap = smallest gap
