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

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.registry import ConfigError


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


# --- performance options (config section `performance`) ----------------------------------


@dataclass(frozen=True)
class Performance:
    """The effective ``performance`` options: how a round computes, not what.  The
    defaults are the plain path (what ``auto`` gives on CPU)."""

    autocast: bool = False  # bf16 autocast around forward passes (and the loss)
    channels_last: bool = False  # NHWC conv weights and 4-D input batches
    fused_optimizer: bool = False  # Adam/SGD(fused=True); False: torch's default (foreach on CUDA)
    compile: bool = False  # full training batches through torch.compile(dynamic=False)
    inference_batch_size: int | None = None  # evaluation and scoring; None: the caller's batch size

    def autocast_on(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def inputs(self, xb: torch.Tensor) -> torch.Tensor:
        """A batch in the model's memory format (a no-op unless channels_last and 4-D)."""
        if self.channels_last and xb.dim() == 4:
            return xb.contiguous(memory_format=torch.channels_last)
        return xb

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in place in the chosen memory format (Parameter objects are kept, so
        an optimizer made before still holds them)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def to_dict(self) -> dict:
        return asdict(self)


PLAIN = Performance()
INFERENCE_BATCH_GPU = 4096  # `auto` on a GPU: at least this many samples per inference batch


def _auto(value, default: bool) -> bool:
    return default if value == "auto" else bool(value)


def resolve_performance(options: dict, device: torch.device, conv: bool, eval_batch_size: int) -> Performance:
    """The ``performance`` config section as effective options on ``device``.

    ``auto`` is off on CPU (the plain path).  On CUDA: bf16 autocast where the GPU supports
    bf16, channels_last for models with conv layers (``conv``), fused optimizers, and
    inference batches of at least INFERENCE_BATCH_GPU.  ``compile: auto`` means conv models
    on CUDA, but the config default is false: its compile time was never measured on a GPU.
    """
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    autocast = _auto(options["autocast"], bf16)
    if autocast and cuda and not bf16:
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"The 'performance.autocast' parameter is true, but {name} does not support bf16.")
    batch = options["inference_batch_size"]
    if batch == "auto":
        batch = max(eval_batch_size, INFERENCE_BATCH_GPU) if cuda else eval_batch_size
    return Performance(
        autocast=autocast,
        channels_last=_auto(options["channels_last"], cuda and conv),
        fused_optimizer=_auto(options["fused_optimizer"], cuda),
        compile=_auto(options["compile"], cuda and conv),
        inference_batch_size=batch,
    )


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float, fused: bool = False):
    extra = {"fused": True} if fused else {}  # one kernel for all parameters (CPU and CUDA)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **extra)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)


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
    performance: Performance = PLAIN,
) -> FitStats:
    """Train until the running accuracy over an epoch reaches ``convergence.train_acc``,
    or (with ``patience``) stops improving, or ``max_epochs`` is reached."""
    n = y.shape[0]
    net = comm.wrap(performance.prepare(model))
    # Compiled for one batch shape only: full batches go through ``compiled``, the epoch's
    # last partial batch through ``net`` eagerly (the same parameters), so a training set
    # that grows every round never recompiles.  Dynamo's cache outlives this wrapper: the
    # next round's model (same architecture, a new object) reuses the compiled graph.
    compiled = torch.compile(net, dynamic=False) if performance.compile else net
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
            forward = compiled if idx.shape[0] == batch_size else net
            if world == 1:
                xb, yb = performance.inputs(x[idx]), y[idx]
                with performance.autocast_on(x.device):
                    out = forward(xb)
                    loss = F.cross_entropy(out, yb)
                step_loss = loss
            else:
                xb, yb = performance.inputs(x[idx[rank::world]]), y[idx[rank::world]]
                with performance.autocast_on(x.device):
                    out = forward(xb)
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
        if not math.isfinite(mean_loss):  # NaN or inf: more epochs cannot bring it back
            return FitStats(epoch, steps, "diverged", acc, mean_loss)
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


def precise_bn(
    model: nn.Module, x: torch.Tensor, batch_size: int, comm=LOCAL, performance: Performance = PLAIN
) -> bool:
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
    with torch.no_grad(), performance.autocast_on(x.device):
        for part in batches(x.shape[0], batch_size):
            model(performance.inputs(x[part][comm.rank :: comm.world_size] if comm.world_size > 1 else x[part]))
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
        if comm.world_size > 1:  # every rank saw a share: average the estimates
            for buf in (m.running_mean, m.running_var):
                buf.copy_(comm.all_reduce_sum(buf.clone()) / comm.world_size)
    return True


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, performance: Performance = PLAIN
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode."""
    model.eval()
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=x.device)
    with torch.inference_mode(), performance.autocast_on(x.device):
        for part in batches(y.shape[0], batch_size):
            out = model(performance.inputs(x[part]))
            correct += (out.argmax(1) == y[part]).sum()
            loss_sum += F.cross_entropy(out.float(), y[part], reduction="sum")
    n = y.shape[0]
    return correct.item() / n, loss_sum.item() / n
