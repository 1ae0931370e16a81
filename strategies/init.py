"""Init strategies: how the model of round t starts.

An init strategy receives the previous round's trained model and a freshly
initialised model of the same architecture (drawn from a generator seeded by
(seed, round), whatever the strategy), plus its own parameters, and returns the
model to train.  Round 1 never calls a strategy: it always starts fresh.

    from strategies.init import register

    @register("halve")
    def halve(prev, fresh, factor: float = 0.5):
        '''Shrink the previous weights, no noise.'''
        with torch.no_grad():
            for p in prev.parameters():
                p.mul_(factor)
        return prev

A strategy may modify and return either model; the engine uses neither afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from strategies.registry import Interval, OneOf, Registry

INIT_STRATEGIES = Registry("init strategy", n_inputs=2)


def register(name: str, constraints: dict | None = None, *, effective: Callable | None = None):
    """Register ``fn(prev, fresh, **params) -> nn.Module`` under ``name``.

    ``constraints`` maps a parameter to its allowed values (``Interval``, ``OneOf``).
    ``effective(params) -> (shrink, perturb)`` says which λ/σ the strategy amounts to,
    for the result columns; strategies that are no mix of the two leave it out (NaN).
    """

    def wrap(fn):
        return INIT_STRATEGIES.add(name, fn, constraints, effective=effective)

    return wrap


def effective_mix(name: str, params: dict) -> tuple[float, float]:
    """The (shrink, perturb) pair recorded in the results for this strategy."""
    effective = INIT_STRATEGIES.get(name).extra["effective"]
    return effective(params) if effective else (float("nan"), float("nan"))


@register("random", effective=lambda p: (0.0, 1.0))
def random_init(prev: nn.Module, fresh: nn.Module) -> nn.Module:
    """Random init: a freshly initialised model every round."""
    return fresh


@register("warm", effective=lambda p: (1.0, 0.0))
def warm(prev: nn.Module, fresh: nn.Module) -> nn.Module:
    """Warm start: continue from the previous round's parameters and buffers."""
    return prev


@register(
    "shrink_perturb",
    {"shrink": Interval(0, 1), "perturb": Interval(0), "bn_stats": OneOf("fresh", "keep")},
    effective=lambda p: (float(p["shrink"]), float(p["perturb"])),
)
def shrink_perturb(
    prev: nn.Module, fresh: nn.Module, shrink: float = 0.4, perturb: float = 0.1, bn_stats: str = "fresh"
) -> nn.Module:
    """Shrink and perturb (Ash & Adams 2020): θ ← shrink·θ_prev + perturb·θ_fresh."""
    # Only parameters are mixed.  BatchNorm running statistics (buffers) come from the
    # fresh model, as in the authors' code ("fresh"), or from the previous one ("keep").
    with torch.no_grad():
        for p_prev, p_fresh in zip(prev.parameters(), fresh.parameters(), strict=True):
            mixed = shrink * p_prev + perturb * p_fresh
            (p_fresh if bn_stats == "fresh" else p_prev).copy_(mixed)
    return fresh if bn_stats == "fresh" else prev
