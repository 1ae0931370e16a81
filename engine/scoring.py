"""Pool outputs for acquisition: only what the strategy declared, batched, under inference mode."""

from __future__ import annotations

import torch

from engine.models import Classifier
from engine.train import LOCAL, batches
from strategies.acquisition import PoolOutputs


def pool_outputs(
    model: Classifier, x: torch.Tensor, needs: tuple[str, ...], batch_size: int, comm=LOCAL
) -> PoolOutputs:
    """The declared outputs over the pool ``x`` [N, ...], in pool order, on the CPU.

    With several ranks, each scores a contiguous shard and the shards are gathered,
    so every rank ends with the whole pool's outputs."""
    n = x.shape[0]
    if not needs:
        return PoolOutputs(n)
    lo, hi = n * comm.rank // comm.world_size, n * (comm.rank + 1) // comm.world_size
    shard = x[lo:hi]
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in needs}
    model.eval()
    with torch.inference_mode():
        for part in batches(shard.shape[0], batch_size):
            embeddings = model.features(shard[part])  # [b, D]
            logits = model.head(embeddings).float()  # [b, C]
            computed = {"embeddings": embeddings, "logits": logits}
            if "probs" in needs:
                computed["probs"] = torch.softmax(logits, dim=1)
            for name in needs:
                parts[name].append(computed[name].float())
    outputs = {}
    for name, chunks in parts.items():
        local = torch.cat(chunks) if chunks else torch.empty(0, device=x.device)
        outputs[name] = comm.all_gather_cat(local, n) if comm.world_size > 1 else local
    return PoolOutputs(n, **{name: value.cpu() for name, value in outputs.items()})
