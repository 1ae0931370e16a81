"""Training to convergence, BatchNorm re-estimation and evaluation: one round's compute.

Data are whole tensors on the training device; a batch is an index slice of a
device ``randperm``.  Accuracy and loss accumulate on the device and are read once
per epoch, so the loop makes no host-device synchronisation per step.

Under data parallelism (``comm.world_size > 1``) every rank draws the same
permutation, takes its strided share of each global batch, and scales its loss so
that DDP's gradient average equals the gradient of the mean loss over the global
batch; the epoch's accuracy is all-reduced, so every rank stops at the same epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def seed_for(seed: int, round_: int, purpose: str) -> int:
    """A 63-bit seed derived from (seed, round, purpose): independent streams, no shared state."""
    tag = int.from_bytes(purpose.encode(), "little")
    return int(np.random.SeedSequence([seed, round_, tag]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class LocalComm:
    """The single-process case of the communication a data-parallel round needs."""

    rank = 0
    world_size = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast(self, obj):
        return obj

    def check_same(self, model: nn.Module, what: str) -> None:
        pass


LOCAL = LocalComm()


def batches(n: int, size: int, min_last: int = 2) -> Iterator[slice]:
    """Slices of ``size`` over ``n`` items.  A trailing batch smaller than ``min_last``
    joins the batch before it: BatchNorm cannot normalise a single sample whose feature
    map is 1x1 (and under data parallelism every rank needs a share of each batch)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        yield slice(start, stop)


@dataclass
class FitStats:
    epochs: int
    steps: int
    stop_reason: str  # threshold | plateau | max_epochs
    train_acc: float  # running accuracy over the last epoch
    train_loss: float  # mean loss over the last epoch


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def fit(
    model: nn.Module,
    x: torch.Tensor,  # [n, ...] the labeled inputs, on the training device
    y: torch.Tensor,  # [n]
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    convergence,  # config section: train_acc, patience, min_delta, max_epochs
    seed: int,
    comm=LOCAL,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitStats:
    """Train until the running accuracy over an epoch reaches ``convergence.train_acc``,
    or (with ``patience``) stops improving, or ``max_epochs`` is reached."""
    n = y.shape[0]
    net = comm.wrap(model)
    shuffle = torch.Generator(device=x.device).manual_seed(seed)
    torch.manual_seed(seed)  # dropout and any other global-RNG use inside the model
    world, rank = comm.world_size, comm.rank
    best, since_best, steps = -math.inf, 0, 0
    model.train()
    for epoch in range(1, convergence.max_epochs + 1):
        order = torch.randperm(n, device=x.device, generator=shuffle)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
        loss_sum = torch.zeros((), device=x.device)
        for part in batches(n, batch_size, min_last=2 * world):
            idx = order[part]
            if world == 1:
                xb, yb = x[idx], y[idx]
                out = net(xb)
                loss = F.cross_entropy(out, yb)
                step_loss = loss
            else:
                xb, yb = x[idx[rank::world]], y[idx[rank::world]]
                out = net(xb)
                loss = F.cross_entropy(out, yb, reduction="sum")
                # DDP averages gradients over ranks: sum * world / global batch makes that
                # the gradient of the mean loss over the whole global batch.
                step_loss = loss * (world / idx.shape[0])
                loss = loss / yb.shape[0]
            optimizer.zero_grad(set_to_none=True)
            step_loss.backward()
            optimizer.step()
            correct += (out.argmax(1) == yb).sum()
            loss_sum += loss.detach() * yb.shape[0]
            steps += 1
        totals = comm.all_reduce_sum(torch.stack([correct.to(loss_sum.dtype), loss_sum]))
        acc, mean_loss = (totals / n).tolist()  # the one host sync of the epoch
        if on_epoch:
            on_epoch(epoch, acc, mean_loss)
        if acc >= convergence.train_acc:
            return FitStats(epoch, steps, "threshold", acc, mean_loss)
        if convergence.patience is not None:
            if acc > best + convergence.min_delta:
                best, since_best = acc, 0
            else:
                since_best += 1
                if since_best >= convergence.patience:
                    return FitStats(epoch, steps, "plateau", acc, mean_loss)
    return FitStats(convergence.max_epochs, steps, "max_epochs", acc, mean_loss)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def precise_bn(model: nn.Module, x: torch.Tensor, batch_size: int, comm=LOCAL) -> bool:
    """Re-estimate BatchNorm running statistics on ``x``: one pass in train mode with a
    cumulative average.  Returns False when the model has no BatchNorm."""
    layers = batchnorm_layers(model)
    if not layers:
        return False
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    model.train()
    with torch.no_grad():
        for part in batches(x.shape[0], batch_size):
            model(x[part][comm.rank :: comm.world_size] if comm.world_size > 1 else x[part])
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
        if comm.world_size > 1:  # every rank saw a share: average the estimates
            for buf in (m.running_mean, m.running_var):
                buf.copy_(comm.all_reduce_sum(buf.clone()) / comm.world_size)
    return True


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode."""
    model.eval()
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=x.device)
    with torch.inference_mode():
        for part in batches(y.shape[0], batch_size):
            out = model(x[part])
            correct += (out.argmax(1) == y[part]).sum()
            loss_sum += F.cross_entropy(out.float(), y[part], reduction="sum")
    n = y.shape[0]
    return correct.item() / n, loss_sum.item() / n
