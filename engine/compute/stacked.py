"""Several trials' models of one architecture as one stacked model: train, evaluate and score
them in the kernels of one (``torch.func``: ``stack_module_state`` + ``vmap`` over
``functional_call``).

Each member keeps its own data order (its own ``randperm`` generator), labelled set,
convergence stop and optimizer state.  What makes the stacked step equal to the members'
own steps (checked on torch CPU, tests/trial/test_ensemble.py):

- the loss is the SUM of the members' mean losses, so each member's gradient is the
  gradient of its own mean loss;
- Adam and SGD are elementwise, so one optimizer over ``[M, ...]`` tensors is one per
  member; its step counter is shared, which is right because every member starts the
  round with a new optimizer at the same step ("a new optimizer every round");
- a member that has converged is written back to its own model and sliced out of the
  stack (parameters, buffers and optimizer state): zeroing its gradients would not do,
  Adam's momentum would still move it.

Per-member batches are one gather with indices ``[M, B]`` into the pool (members whose
pools differ, e.g. seeded holdout splits, index one concatenated pool at their offsets).
BatchNorm runs on stacked buffers; dropout draws different masks per member
(``randomness="different"``), so a member with dropout does not reproduce its run alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from engine.compute.models import Classifier
from engine.compute.train import PLAIN, FitStats, OptimizerSpec, Performance, StopRule, batches, make_optimizer
from strategies.acquisition import PoolOutputs

DETERMINISTIC = ("probs", "logits", "embeddings")


def _float_input(module: nn.Module, args: tuple) -> tuple:
    """BatchNorm's input in float32.  Under autocast a conv hands it bf16; unbatched, cuDNN's
    batch norm takes bf16 input with float32 statistics, but vmap's batching rule for it does
    not ("Expected running_mean to have type BFloat16 but got Float", seen on an H200).  The
    next conv casts back to bf16 under autocast."""
    return (args[0].float(), *args[1:])


class Stack:
    """M models of one architecture as stacked tensors ``{name: [M, ...]}`` and one
    parameter-free copy of the architecture (on the meta device) to call them with."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.size = len(models)
        # Copies (the members' modules stay as they were), whatever mode each member is in
        # (torch.func.stack_module_state refuses members in different train/eval modes).
        named = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in models]
        with torch.no_grad():
            self.params: dict[str, torch.Tensor] = {  # leaves that require grad
                name: torch.stack([p[name] for p, _ in named]).requires_grad_() for name in named[0][0]
            }
            self.buffers: dict[str, torch.Tensor] = {
                name: torch.stack([b[name] for _, b in named]) for name in named[0][1]
            }
        self.base = copy.deepcopy(models[0]).to("meta")
        self.chain = _chain(self.base)
        for module in self.base.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(_float_input)

    # --- calling the members ------------------------------------------------------------

    def _state(self, prefix: str) -> tuple[dict, dict]:
        """The stacked parameters and buffers of the submodule named ``prefix`` (keys without it)."""
        cut = len(prefix)
        params = {k[cut:]: v for k, v in self.params.items() if k.startswith(prefix)}
        return params, {k[cut:]: v for k, v in self.buffers.items() if k.startswith(prefix)}

    def _vmap(self, one, x: torch.Tensor, shared_input: bool, *state):
        return vmap(one, in_dims=(*[0] * len(state), None if shared_input else 0), randomness="different")(*state, x)

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """[M, B, C] class scores of every member on ``x``: [M, B, ...] per member, or
        [B, ...] shared by all (``shared_input``)."""
        if (
            self.chain is not None
            and not shared_input
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
        ):
            return self._chain_forward(x)  # checked bit for bit against vmap on a CPU, without autocast

        def one(state, xb):
            return functional_call(self.base, state, (xb,))

        return self._vmap(one, x, shared_input, (self.params, self.buffers))

    def features_and_logits(self, x: torch.Tensor, shared_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """[M, B, D] penultimate embeddings (a Classifier's ``features``) and [M, B, C] class
        scores, in one vmapped call."""
        features, head = self.base.features, self.base.head

        def one(feature_state, head_state, xb):
            embeddings = functional_call(features, feature_state, (xb,))
            return embeddings, functional_call(head, head_state, (embeddings,))

        return self._vmap(one, x, shared_input, self._state("features."), self._state("head."))

    def _chain_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` of a plain chain (``_chain``) on per-member input, as batched matrix
        products: the ops vmap's rules dispatch for it, without vmap's per-call cost.  Only
        where the same bits were checked: on a CPU, without autocast (a GPU's stacks are
        large, where vmap's cost per call matters little)."""
        for kind, name, arg in self.chain:
            if kind == "linear":
                x = torch.matmul(x, self.params[name + "weight"].transpose(1, 2))
                if arg:
                    x = x + self.params[name + "bias"].unsqueeze(1)
            elif kind == "flatten":
                x = x.flatten(*arg)
            else:
                x = arg(x)
        return x

    def train(self, mode: bool = True) -> Stack:
        self.base.train(mode)
        return self

    # --- members in and out -------------------------------------------------------------

    def write_back(self, models: list[nn.Module], rows: list[int]) -> None:
        """Stack row ``rows[i]`` into ``models[i]`` (parameters and buffers, in place)."""
        with torch.no_grad():
            for model, row in zip(models, rows, strict=True):
                for name, value in self.params.items():
                    model.get_parameter(name).copy_(value[row])
                for name, value in self.buffers.items():
                    model.get_buffer(name).copy_(value[row])

    def keep(self, rows: list[int], optimizer: torch.optim.Optimizer | None = None):
        """Only the stack rows ``rows`` from now on; with ``optimizer``, returns a new one over
        the kept parameters holding the kept rows of its state."""
        index = torch.tensor(rows, device=next(iter(self.params.values())).device)
        old = dict(self.params)
        self.params = {k: v.detach().index_select(0, index).requires_grad_() for k, v in old.items()}
        self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
        self.size = len(rows)
        if optimizer is None:
            return None
        kept = type(optimizer)(list(self.params.values()), **optimizer.defaults)
        for name, param in self.params.items():
            state = optimizer.state.get(old[name])
            if state:
                kept.state[param] = {
                    k: v if k == "step" or not isinstance(v, torch.Tensor) or v.dim() == 0 else v.index_select(0, index)
                    for k, v in state.items()
                }
        return kept


_ACTIVATIONS = {nn.ReLU: torch.relu, nn.Tanh: torch.tanh}


def _chain(model: nn.Module) -> list[tuple] | None:
    """A ``Classifier`` whose features are exactly ``nn.Linear``, ``nn.ReLU``, ``nn.Tanh`` and
    ``nn.Flatten`` modules in an ``nn.Sequential`` (the built-in mlp and logreg), with no hooks,
    as steps (kind, parameter prefix, argument) that ``Stack._chain_forward`` runs on [M, B, ...]
    input; None for any other model (vmap then runs it).  Types are checked exactly: a
    subclass may compute something else."""
    if type(model) is not Classifier or _global_hooks() or any(_hooked(m) for m in model.modules()):
        return None
    parts = [("features.", model.features), ("head.", model.head)]
    if type(model.features) is nn.Sequential:
        parts[:1] = [(f"features.{name}.", module) for name, module in model.features.named_children()]
    steps = []
    for prefix, module in parts:
        kind = type(module)
        if kind is nn.Linear:
            steps.append(("linear", prefix, module.bias is not None))
        elif kind is nn.Flatten:  # per member [B, ...]; stacked [M, B, ...]: one dimension later
            start, end = (d + 1 if d >= 0 else d for d in (module.start_dim, module.end_dim))
            steps.append(("flatten", prefix, (start, end)))
        elif kind in _ACTIVATIONS:
            steps.append(("activation", prefix, _ACTIVATIONS[kind]))
        else:
            return None
    return steps


def _hooked(module: nn.Module) -> bool:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for name in names)


def _global_hooks() -> bool:
    """Hooks registered for every module (``torch.nn.modules.module.register_module_forward_hook``, ...)."""
    from torch.nn.modules import module as torch_module

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(torch_module, name, None) for name in names)


class _Params:
    """What ``make_optimizer`` reads of a model: its parameters (here the stacked ones)."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self.values = list(params.values())

    def parameters(self):
        return iter(self.values)


@dataclass
class MemberBatches:
    """Where each member's training samples are: its labelled positions in the (concatenated)
    pool.  ``positions[m]`` are member m's rows of ``x``/``y`` in ascending pool order, as a
    trial alone takes them (``pool_x[flatnonzero(labeled)]``)."""

    x: torch.Tensor  # [P, ...] the pool (or the members' pools concatenated)
    y: torch.Tensor  # [P]
    positions: torch.Tensor  # [M, n] int64 rows of x
    seeds: list[int]  # each member's shuffle seed (seed_for(seed, round, "train"))


def fit_stacked(
    models: list[nn.Module],
    batches_of: MemberBatches,
    spec: OptimizerSpec,
    batch_size: int,
    convergences: list,  # each member's config section: train_acc, patience, min_delta, max_epochs
    performance: Performance = PLAIN,
    on_epoch: Callable[[int, int, float, float], None] | None = None,  # (member, epoch, acc, loss)
) -> list[FitStats]:
    """Train every member as ``engine.compute.train.fit`` would train it alone, all in one
    stacked model; each member stops on its own rule.  The trained parameters and buffers
    are left in ``models``."""
    members, n = batches_of.positions.shape
    device = batches_of.x.device
    stack = Stack(models).train()
    optimizer = make_optimizer(
        _Params(stack.params), spec.name, spec.lr, spec.weight_decay, spec.momentum, performance.fused_optimizer
    )
    shuffles = [torch.Generator(device=device).manual_seed(seed) for seed in batches_of.seeds]
    torch.manual_seed(batches_of.seeds[0])  # dropout: one global stream for the stack
    active = list(range(members))  # members still training, in stack order
    rules = [StopRule(convergence) for convergence in convergences]
    results: list[FitStats | None] = [None] * members
    steps = 0
    for epoch in range(1, max(c.max_epochs for c in convergences) + 1):
        orders = torch.stack([torch.randperm(n, device=device, generator=shuffles[m]) for m in active])  # [A, n]
        rows = batches_of.positions[active]  # [A, n]
        correct = torch.zeros(len(active), device=device, dtype=torch.int64)
        loss_sum = torch.zeros(len(active), device=device)
        for part in batches(n, batch_size):
            idx = torch.gather(rows, 1, orders[:, part])  # [A, b] rows of the pool
            xb, yb = batches_of.x[idx], batches_of.y[idx]  # [A, b, ...], [A, b]
            with performance.autocast_on(device):
                out = stack.forward(xb)  # [A, b, C]
                losses = F.cross_entropy(out.flatten(0, 1).float(), yb.flatten(), reduction="none").view(yb.shape)
                member_loss = losses.mean(1)  # [A]
            optimizer.zero_grad(set_to_none=True)
            member_loss.sum().backward()  # each member's gradient: that of its own mean loss
            optimizer.step()
            steps += 1
            correct += (out.argmax(2) == yb).sum(1)
            loss_sum += member_loss.detach() * yb.shape[1]
        accs, losses_ = (correct.to(loss_sum.dtype) / n).tolist(), (loss_sum / n).tolist()  # one host sync
        done = []
        for row, (m, acc, mean_loss) in enumerate(zip(active, accs, losses_, strict=True)):
            if on_epoch:
                on_epoch(m, epoch, acc, mean_loss)
            reason = rules[m].after(epoch, acc, mean_loss)
            if reason is not None:
                results[m] = FitStats(epoch, steps, reason, acc, mean_loss)
                done.append(row)
        if done:
            stack.write_back([models[active[row]] for row in done], done)
            kept = [row for row in range(len(active)) if row not in done]
            active = [active[row] for row in kept]
            if not active:
                break
            optimizer = stack.keep(kept, optimizer)
    return results


def member_batch(batch_size: int, members: int) -> int:
    """Rows per member in a stacked inference batch: the trial's batch shared out, but at
    least 256 (or the trial's batch, if smaller): below that the per-call overhead dominates
    small models (mlp, 11 members, one CPU thread: 93 rows each took 1.4x as long as 1024)."""
    return max(batch_size // members, min(batch_size, 256))


def evaluate_stacked(
    models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int, performance: Performance = PLAIN
) -> list[tuple[float, float]]:
    """Each member's (accuracy, mean cross-entropy) on the same (x, y), in eval mode, in one
    stacked pass per batch."""
    stack = Stack(models).train(False)
    correct = torch.zeros(stack.size, device=x.device, dtype=torch.int64)
    loss_sum = torch.zeros(stack.size, device=x.device)
    with torch.inference_mode(), performance.autocast_on(x.device):
        for part in batches(y.shape[0], batch_size):
            out = stack.forward(x[part], shared_input=True).float()  # [M, b, C]
            target = y[part].expand(stack.size, -1)
            correct += (out.argmax(2) == target).sum(1)
            loss_sum += F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="none").view_as(target).sum(1)
    n = y.shape[0]
    return [(c / n, s / n) for c, s in zip(correct.tolist(), loss_sum.tolist(), strict=True)]


def pool_outputs_stacked(
    models: list[nn.Module],
    x: torch.Tensor,
    positions: torch.Tensor,  # [M, N] each member's unlabelled rows of x
    needs: tuple[str, ...],
    batch_size: int,
    performance: Performance = PLAIN,
) -> list[PoolOutputs]:
    """Each member's deterministic pool outputs (probs, logits, embeddings) over its own
    unlabelled positions, in one stacked eval-mode pass per batch: the stacked twin of
    ``engine.compute.scoring.pool_outputs`` for those needs."""
    unknown = [name for name in needs if name not in DETERMINISTIC]
    if unknown:
        raise ValueError(f"stacked scoring computes {', '.join(DETERMINISTIC)}; not {unknown[0]}")
    members, n = positions.shape
    if not needs:
        return [PoolOutputs(n) for _ in range(members)]
    stack = Stack(models).train(False)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in needs}
    with torch.inference_mode(), performance.autocast_on(x.device):
        for part in batches(n, batch_size):
            xb = x[positions[:, part]]  # [M, b, ...]
            if "embeddings" in needs:
                embeddings, logits = stack.features_and_logits(xb)  # [M, b, D], [M, b, C]
                computed = {"embeddings": embeddings, "logits": logits.float()}
            else:  # the plain forward: one call fewer per layer group
                computed = {"logits": stack.forward(xb).float()}
            logits = computed["logits"]
            if "probs" in needs:
                computed["probs"] = torch.softmax(logits, dim=2)
            for name in needs:
                parts[name].append(computed[name].float())
    stacked = {name: torch.cat(chunks, dim=1) for name, chunks in parts.items()}  # [M, N, ...]
    return [PoolOutputs(n, **{name: value[m] for name, value in stacked.items()}) for m in range(members)]
