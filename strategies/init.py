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

With a ``pretrain`` section in the config, round 1 calls the strategy too, with the
pretrained source model as ``prev`` (see engine/trial/loop.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from engine.errors import ConfigError
from engine.schema.catalogue import INIT_STRATEGIES
from engine.schema.registry import Interval, ModelSpec, Nullable, OneOf


def register(
    name: str,
    constraints: dict | None = None,
    *,
    effective: Callable | None = None,
    check_model: Callable | None = None,
    override: bool = False,
):
    """Register ``fn(prev, fresh, **params) -> nn.Module`` under ``name``.

    ``constraints`` maps a parameter to its allowed values (``Interval``, ``OneOf``).
    ``effective(params) -> (shrink, perturb)`` says which λ/σ the strategy amounts to,
    for the result columns; strategies that are no mix of the two leave it out (NaN).
    ``check_model(params, model: ModelSpec)`` raises ``ConfigError`` when the strategy
    cannot apply to that model; it runs once, when the config is validated.
    """

    def wrap(fn):
        return INIT_STRATEGIES.add(
            name, fn, constraints, override=override, effective=effective, check_model=check_model
        )

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


@register("reset_head", effective=lambda p: (float("nan"), float("nan")))
def reset_head(prev: nn.Module, fresh: nn.Module) -> nn.Module:
    """Warm start except the head (the last linear layer), which starts fresh."""
    # Everything else, BatchNorm running statistics included, continues from round t-1.
    with torch.no_grad():
        prev.head.load_state_dict(fresh.head.state_dict())
    return prev


def noise_seed(fresh: nn.Module) -> int:
    """A 63-bit seed derived from the fresh model's parameters.

    The fresh model of round t is drawn from a generator seeded by (seed, t), so this
    makes the noise deterministic per (seed, round), the same on every device and
    every data-parallel rank, without the strategy receiving the seed itself."""
    digest = hashlib.sha256()
    for p in fresh.parameters():
        digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


@register(
    "shrink_perturb_gaussian",
    {"shrink": Interval(0, 1), "perturb": Interval(0), "bn_stats": OneOf("fresh", "keep")},
    # λ is the same λ as shrink_perturb's; σ is a noise scale, not a mix with a fresh
    # model, so it fills the perturb column only where the two coincide (σ = 0).
    effective=lambda p: (float(p["shrink"]), 0.0 if p["perturb"] == 0 else float("nan")),
)
def shrink_perturb_gaussian(
    prev: nn.Module, fresh: nn.Module, shrink: float = 0.4, perturb: float = 0.01, bn_stats: str = "fresh"
) -> nn.Module:
    """Shrink and Gaussian perturb (the plasticity papers' variant): θ ← shrink·θ_prev + N(0, perturb²)."""
    # The noise is drawn on the CPU in parameter order from a generator seeded by the
    # fresh model (noise_seed), then moved: identical on CPU and GPU.  Buffers as in
    # shrink_perturb: the fresh model's ("fresh") or the previous one's ("keep").
    generator = torch.Generator().manual_seed(noise_seed(fresh))
    with torch.no_grad():
        for p_prev, p_fresh in zip(prev.parameters(), fresh.parameters(), strict=True):
            noise = torch.randn(p_prev.shape, generator=generator).to(p_prev.device, p_prev.dtype)
            mixed = shrink * p_prev + perturb * noise
            (p_fresh if bn_stats == "fresh" else p_prev).copy_(mixed)
    return fresh if bn_stats == "fresh" else prev


def _check_blocks(params: dict, model: ModelSpec) -> None:
    if model.n_blocks is None:
        raise ConfigError(
            f"The init strategy warm_partial needs a model that names its blocks; {model.name!r} does not."
        )
    if params["blocks"] is not None and params["blocks"] > model.n_blocks:
        raise ConfigError(
            f"The 'blocks' parameter of warm_partial must be at most {model.n_blocks}, the number of blocks of "
            f"{model.name} here. Got {params['blocks']!r}."
        )


@register(
    "warm_partial",
    {"blocks": Nullable(Interval(0, integer=True))},
    effective=lambda p: (0.0, 1.0) if p["blocks"] == 0 else (float("nan"), float("nan")),
    check_model=_check_blocks,
)
def warm_partial(prev: nn.Module, fresh: nn.Module, blocks: int | None = None) -> nn.Module:
    """Warm-start the first `blocks` blocks (default: half, rounded down), fresh for the rest."""
    # Blocks are the model's own (engine/compute/models.py): mlp = hidden layers + head,
    # resnet18 = stem, 8 BasicBlocks, head; logreg = head.  Parameters and buffers
    # (BatchNorm statistics) of a warm block come from round t-1.
    groups = getattr(fresh, "blocks", ())
    if not groups:
        raise ConfigError(
            f"The init strategy warm_partial needs a model that names its blocks; {type(fresh).__name__} does not."
        )
    n_warm = len(groups) // 2 if blocks is None else blocks
    if n_warm > len(groups):
        raise ConfigError(f"The 'blocks' parameter of warm_partial must be at most {len(groups)}. Got {blocks!r}.")
    warm_names = [name for group in groups[:n_warm] for name in group]
    state, previous = fresh.state_dict(), prev.state_dict()
    for key in state:
        if any(key.startswith(name + ".") for name in warm_names):
            state[key] = previous[key]
    fresh.load_state_dict(state)
    return fresh
