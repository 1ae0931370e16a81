"""The trial's StepRunner (engine.compute.train): one model and one optimizer kept across rounds,
each round's model copied in and the optimizer state zeroed in place.  On CPU it steps
eagerly, and every round must equal a new optimizer on the round's own model bit for
bit, whatever the init strategy, optimizer, options or growth of the training set.  The
CUDA graph path itself is checked by benchmarks/gpu_check.sh on a GPU (graph against
eager losses, one capture per trial)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from engine.compute.models import build_model
from engine.compute.train import PLAIN, OptimizerSpec, Performance, StepRunner, fit, make_optimizer, resolve_performance
from engine.schema.config import DEFAULTS
from strategies.init import INIT_STRATEGIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def convergence(max_epochs=2):
    return SimpleNamespace(train_acc=1.0, patience=None, min_delta=0.0, max_epochs=max_epochs)


def data(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def build(name, shape, seed):
    torch.manual_seed(seed)
    params = {"width": 4} if name == "resnet18" else {"width": 16}
    return build_model(name, params, shape, 10)


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def rounds(name, shape, init, spec, performance, runner):
    """Three rounds of a growing training set (40, 70, 100 samples: partial last batches
    too): the models after each round and their FitStats.  ``runner`` True: one StepRunner
    for all rounds; False: a new optimizer every round (the eager reference)."""
    x, y = data(100, shape)
    strategy = INIT_STRATEGIES.get(init)
    params = {"shrink": 0.5, "perturb": 0.2} if init == "shrink_perturb" else {}
    trial = StepRunner(spec, performance) if runner else None
    model, out = None, []
    for round_, n in enumerate((40, 70, 100), start=1):
        fresh = build(name, shape, seed=round_)
        model = fresh if model is None else strategy.fn(model, fresh, **params)
        if runner:
            stats = fit(model, x[:n], y[:n], None, 16, convergence(), round_, performance=performance, runner=trial)
        else:
            opt = make_optimizer(
                model, spec.name, spec.lr, spec.weight_decay, spec.momentum, performance.fused_optimizer
            )
            stats = fit(model, x[:n], y[:n], opt, 16, convergence(), round_, performance=performance)
        out.append((copy.deepcopy(model), stats))
    return out, trial


@pytest.mark.parametrize(
    "name,shape,init,optimizer",
    [
        ("mlp", (1, 4, 4), "warm", "adam"),
        ("mlp", (1, 4, 4), "shrink_perturb", "sgd"),
        ("mlp", (1, 4, 4), "random", "adam"),
        ("resnet18", (3, 8, 8), "shrink_perturb", "adam"),
        ("resnet18", (3, 8, 8), "warm", "sgd"),
    ],
)
def test_a_persistent_runner_equals_a_new_optimizer_every_round(name, shape, init, optimizer):
    spec = OptimizerSpec(optimizer, 1e-2 if optimizer == "adam" else 0.1, 1e-4, 0.9)
    eager, _ = rounds(name, shape, init, spec, PLAIN, runner=False)
    persistent, runner = rounds(name, shape, init, spec, PLAIN, runner=True)
    for (a, stats_a), (b, stats_b) in zip(eager, persistent, strict=True):
        assert stats_a == stats_b
        assert same_state(a, b)
    assert runner.graph is None and runner.captures == 0  # a CPU never captures
    # The rounds really differ (the copy-in is not a no-op): round 3's model moved away from round 1's.
    assert not same_state(eager[0][0], eager[2][0])


def test_the_runner_with_fused_optimizer_and_channels_last_equals_eager():
    performance = Performance(fused_optimizer=True, channels_last=True)
    spec = OptimizerSpec("adam", 1e-2)
    eager, _ = rounds("resnet18", (3, 8, 8), "warm", spec, performance, runner=False)
    persistent, _ = rounds("resnet18", (3, 8, 8), "warm", spec, performance, runner=True)
    for (a, stats_a), (b, stats_b) in zip(eager, persistent, strict=True):
        assert stats_a == stats_b and same_state(a, b)


def test_the_runner_keeps_one_model_and_one_optimizer_for_the_trial():
    spec = OptimizerSpec("adam", 1e-2)
    x, y = data(64, (1, 4, 4))
    runner = StepRunner(spec)
    first = build("mlp", (1, 4, 4), seed=1)
    fit(first, x, y, None, 16, convergence(1), 0, runner=runner)
    static, optimizer = runner.model, runner.optimizer
    storage = [p.data_ptr() for p in static.parameters()]
    moments = [s["exp_avg"].data_ptr() for s in optimizer.state.values()]
    second = build("mlp", (1, 4, 4), seed=2)
    fit(second, x, y, None, 16, convergence(1), 0, runner=runner)
    assert runner.model is static and runner.optimizer is optimizer
    assert [p.data_ptr() for p in static.parameters()] == storage  # copied in, not replaced
    assert [s["exp_avg"].data_ptr() for s in optimizer.state.values()] == moments
    assert static is not second and same_state(static, second)  # the result is back in the round's model


def test_the_optimizer_reset_zeroes_every_state_tensor():
    runner = StepRunner(OptimizerSpec("adam", 1e-2))
    x, y = data(32, (1, 4, 4))
    fit(build("mlp", (1, 4, 4), 1), x, y, None, 16, convergence(1), 0, runner=runner)
    state = list(runner.optimizer.state.values())
    assert state and all(float(s["step"]) == 2 for s in state)
    runner.reset_optimizer()
    for s in state:
        assert float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any()


def test_fit_takes_an_optimizer_or_a_runner_not_both():
    model = build("mlp", (1, 4, 4), 0)
    x, y = data(16, (1, 4, 4))
    opt = make_optimizer(model, "adam", 1e-3, 0.0, 0.9)
    with pytest.raises(ValueError, match="not both"):
        fit(model, x, y, opt, 16, convergence(1), 0, runner=StepRunner(OptimizerSpec("adam", 1e-3)))


def test_cuda_graphs_resolve_on_for_cuda_only():
    options = dict(DEFAULTS["performance"])
    assert resolve_performance(options, CPU, True, 1024).cuda_graphs is False
    assert resolve_performance({**options, "cuda_graphs": True}, CPU, True, 1024).cuda_graphs is False
    runner = StepRunner(OptimizerSpec("adam", 1e-3), Performance(cuda_graphs=True))
    assert not runner.uses_graphs(CPU)  # an explicit true on a CPU steps eagerly
