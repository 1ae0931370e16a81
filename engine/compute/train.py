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
import copy
import itertools
import math
import os
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError


def seed_for(seed: int, round_: int, purpose: str) -> int:
    """A 63-bit seed derived from (seed, round, purpose): independent streams, no shared state."""
    tag = int.from_bytes(purpose.encode(), "little")
    return int(np.random.SeedSequence([seed, round_, tag]).generate_state(2, np.uint64)[0] >> np.uint64(1))


T = TypeVar("T")


@runtime_checkable
class Comm(Protocol):
    """What a round asks of the processes that compute it together (its data-parallel ranks):
    ``LocalComm`` below is one process, ``engine.trial.distributed.TorchComm`` a torch.distributed
    group.  Every rank calls each method at the same point of the round (they are collectives)."""

    rank: int  # this process's place in the group, 0 .. world_size - 1
    world_size: int  # how many processes compute the round

    @abstractmethod
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: ``model`` itself, or wrapped to average gradients (DDP)."""

    @abstractmethod
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place); every rank gets the sum."""

    @abstractmethod
    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable value), on every rank."""

    @abstractmethod
    def all_gather_cat(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's shard ``[n_r, ...]`` concatenated in rank order: ``[total, ...]``."""

    @abstractmethod
    def check_same(self, model: nn.Module, what: str) -> None:
        """Raise when the ranks hold different parameters; ``what`` names the moment."""


class LocalComm(Comm):
    """The single-process case of the communication a data-parallel round needs."""

    rank = 0
    world_size = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast(self, obj: T) -> T:
        return obj

    def all_gather_cat(self, local: torch.Tensor, total: int) -> torch.Tensor:
        assert local.shape[0] == total, (local.shape, total)
        return local

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


def inductor_cache_per_isa() -> None:
    """One inductor cache folder per ATen CPU capability, unless the user chose one
    (``TORCHINDUCTOR_CACHE_DIR``).  torch 2.14's compile cache does not tell a kernel built
    for AVX-512 from one for AVX2: on an AVX-512 CPU, a run under ``ATEN_CPU_CAPABILITY=avx2``
    loaded the native run's cached code and trained to NaN (tests/compute/test_performance.py)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # inductor writes its default here when it first runs
    if chosen is not None and os.path.abspath(chosen) != default and os.path.dirname(chosen) != default:
        return  # the user's own folder
    isa = torch.backends.cpu.get_cpu_capability().lower()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default, f"warmstart-{isa}")


@dataclass
class FitStats:
    epochs: int
    steps: int
    stop_reason: str  # StopRule's: diverged | threshold | plateau | max_epochs
    train_acc: float  # running accuracy over the last epoch
    train_loss: float  # mean loss over the last epoch
    capture_seconds: float = 0.0  # CUDA graph capture in this call (once per trial, see StepRunner)


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
    cuda_graphs: bool = False  # full training batches replay one CUDA graph of the step (StepRunner)

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
    ``cuda_graphs``: on CUDA, unless compiled; never on a CPU, where ``true`` also means eager
    steps (the same persistent model and optimizer, see StepRunner).
    """
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    autocast = _auto(options["autocast"], bf16)
    if autocast and cuda and not bf16:
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"The 'performance.autocast' parameter is true, but {name} does not support bf16.")
    # CUDA graphs: on for CUDA unless compiled (measured on an H200: 2.9x the eager step at
    # batch 128, where the step is bound by the host); on a CPU the steps run eagerly.
    requested = options.get("cuda_graphs", "auto")
    if requested is True and options["compile"] is True:
        raise ConfigError(
            "The 'performance.cuda_graphs' and 'performance.compile' parameters cannot both be true; "
            "set one of them to false."
        )
    compile_ = _auto(options["compile"], cuda and conv and requested is not True)
    graphs = cuda and _auto(requested, not compile_)
    batch = options["inference_batch_size"]
    if batch == "auto":
        batch = max(eval_batch_size, INFERENCE_BATCH_GPU) if cuda else eval_batch_size
    return Performance(
        autocast=autocast,
        channels_last=_auto(options["channels_last"], cuda and conv),
        fused_optimizer=_auto(options["fused_optimizer"], cuda),
        compile=compile_,
        cuda_graphs=graphs,
        inference_batch_size=batch,
    )


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    fused: bool = False,
    capturable: bool = False,
):
    extra = {"fused": True} if fused else {}  # one kernel for all parameters (CPU and CUDA)
    if name == "adam":
        # capturable: Adam's step counters live on the device, so a CUDA graph can replay the step.
        if capturable:
            extra["capturable"] = True
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **extra)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)


@dataclass(frozen=True)
class OptimizerSpec:
    """What a round's new optimizer is (the config's ``optimizer`` section)."""

    name: str
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9


class StepRunner:
    """The training step of a whole trial: one model, one optimizer, at most one CUDA graph.

    A CUDA graph replays fixed addresses, so the runner keeps its own model (a copy of
    the first round's) and its own optimizer for every round of the trial.  ``fit(...,
    runner=runner)`` copies the round's model into them (parameters and buffers,
    ``copy_`` under ``no_grad``), zeroes the optimizer state in place (Adam's step counters
    and moments, SGD's momentum buffers: what a new optimizer starts from), trains, and
    copies the result back into the round's model.  On CUDA with ``performance.cuda_graphs``
    (one process, no DDP) full batches replay one graph of the whole step: forward, loss,
    backward, optimizer step and the epoch's accuracy and loss sums; the partial last batch
    runs eagerly on the same tensors.  The graph is captured once, at the first round
    with a full batch, and never again: each batch is gathered into one static input
    buffer, so a training set that grows every round reuses it.  Everywhere else
    (CPU, DDP, graphs off) the same persistent model and optimizer step eagerly, and the
    result equals a new optimizer's bit for bit (tests/compute/test_graphs.py).
    """

    def __init__(self, spec: OptimizerSpec, performance: Performance = PLAIN, comm: Comm = LOCAL) -> None:
        self.spec = spec
        self.performance = performance
        self.comm = comm
        self.model: nn.Module | None = None  # the trained module (static storage)
        self.optimizer: torch.optim.Optimizer | None = None
        self.net: nn.Module | None = None  # ``model`` as the step calls it (DDP-wrapped)
        self.compiled: nn.Module | None = None
        self.graph = None  # torch.cuda.CUDAGraph once captured
        self.captures = 0  # graphs captured so far (1 at most)
        self.capture_seconds = 0.0  # their total
        self._owned = True  # False: ``around`` an optimizer someone else made (train that model directly)
        self.correct: torch.Tensor | None = None  # the epoch's sums, on the device (static under a graph)
        self.loss_sum: torch.Tensor | None = None
        self.static_x: torch.Tensor | None = None  # the graph's input batch
        self.static_y: torch.Tensor | None = None

    @classmethod
    def around(
        cls, model: nn.Module, optimizer: torch.optim.Optimizer, performance: Performance, comm: Comm
    ) -> StepRunner:
        """One ``fit`` call's runner over a given model and optimizer: trains them directly, eagerly."""
        runner = cls(OptimizerSpec("given", 0.0), replace(performance, cuda_graphs=False), comm)
        runner._owned = False
        runner._build(model, optimizer)
        return runner

    def uses_graphs(self, device: torch.device) -> bool:
        return self.performance.cuda_graphs and device.type == "cuda" and self.comm.world_size == 1

    def _build(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = self.performance.prepare(model)
        device = next(model.parameters()).device
        if optimizer is None:
            optimizer = make_optimizer(
                model,
                self.spec.name,
                self.spec.lr,
                self.spec.weight_decay,
                self.spec.momentum,
                self.performance.fused_optimizer,
                capturable=self.uses_graphs(device),
            )
        self.optimizer = optimizer
        self.net = self.comm.wrap(self.model)
        # Compiled for one batch shape only: full batches go through ``compiled``, the epoch's
        # last partial batch through ``net`` eagerly (the same parameters), so a training set
        # that grows every round never recompiles.
        if self.performance.compile:
            inductor_cache_per_isa()
        self.compiled = torch.compile(self.net, dynamic=False) if self.performance.compile else self.net

    # --- a round's state in and out -------------------------------------------------------

    def load(self, model: nn.Module) -> None:
        """The round's model into the static one, and the optimizer as new (both in place)."""
        with torch.no_grad():
            mine = self.model.state_dict()
            for key, value in model.state_dict().items():
                mine[key].copy_(value)
            self.reset_optimizer()

    def reset_optimizer(self) -> None:
        """Zero every state tensor in place: a fresh Adam's step counts and moments are zeros,
        and SGD's first step with a zero momentum buffer is its step without one."""
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()

    def store(self, model: nn.Module) -> None:
        """The trained static model's parameters and buffers back into the round's model."""
        if model is self.model:
            return
        self.performance.prepare(model)
        model.train(self.model.training)  # as if it had been trained itself
        with torch.no_grad():
            mine = self.model.state_dict()
            for key, value in model.state_dict().items():
                value.copy_(mine[key])

    # --- the step ----------------------------------------------------------------------

    def start_epoch(self, device: torch.device) -> None:
        if self.correct is None or self.correct.device != device:
            self.correct = torch.zeros((), device=device, dtype=torch.int64)
            self.loss_sum = torch.zeros((), device=device)
        self.correct.zero_()
        self.loss_sum.zero_()

    def step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, batch_size: int) -> None:
        """One optimizer step on the rows ``idx`` of (x, y); the sums accumulate on the device."""
        world, rank = self.comm.world_size, self.comm.rank
        if self.graph is not None and idx.shape[0] == batch_size:
            torch.index_select(x, 0, idx, out=self.static_x)
            torch.index_select(y, 0, idx, out=self.static_y)
            self.graph.replay()
            return
        forward = self.compiled if idx.shape[0] == batch_size else self.net
        if world == 1:
            self._eager_step(forward, x[idx], y[idx], None, set_to_none=self.graph is None)
        else:
            self._eager_step(forward, x[idx[rank::world]], y[idx[rank::world]], idx.shape[0], set_to_none=True)

    def _eager_step(self, forward, xb, yb, global_batch: int | None, set_to_none: bool, autocast=None) -> None:
        performance = self.performance
        with autocast or performance.autocast_on(xb.device):
            out = forward(performance.inputs(xb))
            if global_batch is None:
                loss = F.cross_entropy(out, yb)
                step_loss = loss
            else:
                loss = F.cross_entropy(out, yb, reduction="sum")
                # DDP averages gradients over ranks: sum * world / global batch makes that
                # the gradient of the mean loss over the whole global batch.
                step_loss = loss * (self.comm.world_size / global_batch)
                loss = loss / yb.shape[0]
        # With a graph, the gradients' storage is the graph's: the eager step writes into it.
        self.optimizer.zero_grad(set_to_none=set_to_none)
        step_loss.backward()
        self.optimizer.step()
        self.correct += (out.argmax(1) == yb).sum()
        self.loss_sum += loss.detach() * yb.shape[0]

    def capture(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
        """Capture the full-batch step (once per trial).  Returns the seconds it took.

        Warm-up steps on a side stream create the optimizer state and choose the kernels;
        they and the capture change the static model, so the caller loads the round's
        model afterwards (``load``), which also zeroes the optimizer state."""
        began = time.perf_counter()
        device = x.device
        self.start_epoch(device)
        self.static_x = x[:batch_size].clone()
        self.static_y = y[:batch_size].clone()
        # The autocast cache must be off under capture (torch.cuda.graphs' documentation).
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
            if self.performance.autocast
            else contextlib.nullcontext()
        )
        self.model.train()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._eager_step(self.net, self.static_x, self.static_y, None, set_to_none=True, autocast=autocast)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # gradients allocated by (and owned by) the graph
        # thread_local: another thread's CUDA calls (trials run as threads) do not void this capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._eager_step(self.net, self.static_x, self.static_y, None, set_to_none=False, autocast=autocast)
        torch.cuda.synchronize(device)
        self.graph = graph
        self.captures += 1
        seconds = time.perf_counter() - began
        self.capture_seconds += seconds
        return seconds

    def begin(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
        """Ready to train ``model`` on (x, y): capture if due, then load.  Returns capture seconds."""
        if not self._owned:
            return 0.0
        seconds = 0.0
        if self.model is None:
            self._build(copy.deepcopy(model))
        if self.graph is None and self.uses_graphs(x.device) and y.shape[0] >= batch_size:
            seconds = self.capture(x, y, batch_size)
        self.load(model)
        return seconds


class StopRule:
    """When training stops: the one rule, for a model trained alone (``fit``) and for each
    member of a stacked fit (engine/compute/stacked.py).  After each epoch, ``after`` gives
    the reason to stop, or None to go on:

    - ``diverged``: the epoch's mean loss is NaN or inf (more epochs cannot bring it back);
    - ``threshold``: the running accuracy over the epoch reached ``convergence.train_acc``;
    - ``plateau``: with ``patience``, that many epochs without an improvement over ``min_delta``;
    - ``max_epochs``: the last epoch allowed."""

    def __init__(self, convergence) -> None:  # config section: train_acc, patience, min_delta, max_epochs
        self.convergence = convergence
        self.best, self.since_best = -math.inf, 0

    def after(self, epoch: int, acc: float, loss: float) -> str | None:
        convergence = self.convergence
        if not math.isfinite(loss):
            return "diverged"
        if acc >= convergence.train_acc:
            return "threshold"
        if convergence.patience is not None:
            if acc > self.best + convergence.min_delta:
                self.best, self.since_best = acc, 0
            else:
                self.since_best += 1
                if self.since_best >= convergence.patience:
                    return "plateau"
        if epoch >= convergence.max_epochs:
            return "max_epochs"
        return None


WARMUP_STEPS = 3  # eager steps before a capture (torch.cuda.graphs' documentation: a few, on a side stream)


def fit(
    model: nn.Module,
    x: torch.Tensor,  # [n, ...] the labeled inputs, on the training device
    y: torch.Tensor,  # [n]
    optimizer: torch.optim.Optimizer | None,
    batch_size: int,
    convergence,  # config section: train_acc, patience, min_delta, max_epochs
    seed: int,
    comm: Comm = LOCAL,
    on_epoch: Callable[[int, float, float], None] | None = None,
    performance: Performance = PLAIN,
    runner: StepRunner | None = None,
) -> FitStats:
    """Train until the running accuracy over an epoch reaches ``convergence.train_acc``,
    or (with ``patience``) stops improving, or ``max_epochs`` is reached.

    Either ``optimizer`` (a new one, made for ``model``: the step runs eagerly on them), or
    ``runner``, the trial's StepRunner (``optimizer`` None): it trains its own copy of the
    model with its own optimizer, reset in place, maybe as a CUDA graph, and leaves the
    result in ``model``; its ``performance`` and ``comm`` are the ones used."""
    if runner is None:
        runner = StepRunner.around(model, optimizer, performance, comm)
    elif optimizer is not None:
        raise ValueError("fit takes an optimizer or a runner, not both: the runner owns its optimizer")
    comm = runner.comm
    n = y.shape[0]
    capture_seconds = runner.begin(model, x, y, batch_size)
    shuffle = torch.Generator(device=x.device).manual_seed(seed)
    torch.manual_seed(seed)  # dropout and any other global-RNG use inside the model
    rule, steps = StopRule(convergence), 0
    runner.model.train()
    try:
        for epoch in itertools.count(1):  # the rule stops at max_epochs at the latest
            order = torch.randperm(n, device=x.device, generator=shuffle)
            runner.start_epoch(x.device)
            for part in batches(n, batch_size, min_last=2 * comm.world_size):
                runner.step(x, y, order[part], batch_size)
                steps += 1
            totals = comm.all_reduce_sum(torch.stack([runner.correct.to(runner.loss_sum.dtype), runner.loss_sum]))
            acc, mean_loss = (totals / n).tolist()  # the one host sync of the epoch
            if on_epoch:
                on_epoch(epoch, acc, mean_loss)
            reason = rule.after(epoch, acc, mean_loss)
            if reason is not None:
                return FitStats(epoch, steps, reason, acc, mean_loss, capture_seconds)
    finally:
        runner.store(model)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def precise_bn(
    model: nn.Module, x: torch.Tensor, batch_size: int, comm: Comm = LOCAL, performance: Performance = PLAIN
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
