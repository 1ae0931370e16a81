"""The ``performance`` options (engine.compute.train.Performance): config validation, how ``auto``
resolves, and on CPU that each option computes what the plain path computes (bf16
autocast within a loose tolerance, the others tightly), that a compiled model does not
recompile when the training set grows, and that rows record the effective options.
Timings are in benchmarks/perf.py, never asserted here."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import engine.compute.train
from engine.compute.models import build_model
from engine.compute.scoring import pool_outputs
from engine.compute.train import PLAIN, Performance, evaluate, fit, make_optimizer, precise_bn, resolve_performance
from engine.errors import ConfigError
from engine.schema.config import DEFAULTS, build, validate
from engine.trial.driver import Driver
from engine.trial.session import start_trial
from strategies.acquisition import ACQUISITION_STRATEGIES

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only its type is read by resolve_performance


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def convergence(max_epochs):
    """``fit``'s convergence section: an unreachable threshold, so exactly ``max_epochs`` epochs."""
    return SimpleNamespace(train_acc=1.0, patience=None, min_delta=0.0, max_epochs=max_epochs)


def data(n, shape, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def train(model, x, y, performance, optimizer="adam", epochs=2, batch_size=16, seed=0):
    """A copy of ``model`` trained with ``performance``: (the copy, FitStats)."""
    model = copy.deepcopy(model)
    opt = make_optimizer(model, optimizer, 1e-2 if optimizer == "adam" else 0.1, 0.0, 0.9, performance.fused_optimizer)
    stats = fit(model, x, y, opt, batch_size, convergence(epochs), seed, performance=performance)
    return model, stats


def max_difference(a, b) -> float:
    return max((p.detach().float() - q.detach().float()).abs().max().item() for p, q in zip(a, b, strict=True))


def resnet(width=4, shape=(3, 8, 8), seed=0):
    torch.manual_seed(seed)
    return build_model("resnet18", {"width": width}, shape, 10)


def mlp(shape=(1, 4, 4), seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", {"width": 16}, shape, 10)


# --- config ---------------------------------------------------------------------------------


def test_defaults_are_auto_except_compile():
    cfg = validate(DEFAULTS)
    assert cfg.performance.to_dict() == {
        "autocast": "auto",
        "channels_last": "auto",
        "fused_optimizer": "auto",
        "compile": False,
        "cuda_graphs": "auto",
        "inference_batch_size": "auto",
        "ensemble": "auto",
        "ensemble_size": 32,
    }


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("performance.autocast=true", True),
        ("performance.channels_last=false", False),
        ("performance.fused_optimizer=auto", "auto"),
        ("performance.compile=true", True),
        ("performance.compile=auto", "auto"),
        ("performance.inference_batch_size=8192", 8192),
        ("performance.cuda_graphs=false", False),
        ("performance.cuda_graphs=auto", "auto"),
    ],
)
def test_performance_values_are_accepted(assignment, expected):
    key = assignment.split("=")[0].split(".")[1]
    assert getattr(build(sets=[assignment]).performance, key) == expected


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("performance.autocast=yes please", "performance.autocast"),
        ("performance.channels_last=1", "performance.channels_last"),
        ("performance.fused_optimizer=fused", "performance.fused_optimizer"),
        ("performance.compile=null", "performance.compile"),
        ("performance.inference_batch_size=0", "performance.inference_batch_size"),
        ("performance.inference_batch_size=1.5", "performance.inference_batch_size"),
        ("performance.inference_batch_size=true", "performance.inference_batch_size"),
        ("performance.cuda_graphs=sometimes", "performance.cuda_graphs"),
    ],
)
def test_bad_performance_values_are_refused_naming_the_key(assignment, key):
    with pytest.raises(ConfigError) as info:
        build(sets=[assignment])
    message = str(info.value)
    assert f"'{key}'" in message and "'auto'" in message and "\n" not in message


def test_unknown_performance_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="performance.autocastt.*autocast"):
        build(sets=["performance.autocastt=true"])
    with pytest.raises(ConfigError, match="'performance' key is a section"):
        build(sets=["performance=true"])


def test_performance_is_not_part_of_the_trial_identity():
    base = build().trial_id()
    assert build(sets=["performance.autocast=true", "performance.compile=true"]).trial_id() == base


def test_a_config_saved_before_the_section_existed_still_validates():
    old = copy.deepcopy(DEFAULTS)
    del old["performance"]
    cfg = validate(old)
    assert cfg.performance.to_dict() == DEFAULTS["performance"]
    assert cfg.trial_id() == validate(DEFAULTS).trial_id()


# --- how auto resolves ------------------------------------------------------------------------

AUTO = dict(DEFAULTS["performance"])


def test_auto_is_the_plain_path_on_cpu():
    for conv in (False, True):
        assert resolve_performance(AUTO, CPU, conv, 1024) == Performance(inference_batch_size=1024)
    assert resolve_performance({**AUTO, "compile": "auto"}, CPU, True, 512).compile is False


def test_explicit_values_are_honoured_on_cpu():
    options = {"autocast": True, "channels_last": True, "fused_optimizer": True, "compile": True}
    resolved = resolve_performance({**options, "inference_batch_size": 77}, CPU, False, 1024)
    assert resolved == Performance(True, True, True, True, 77)


@pytest.fixture
def fake_gpu(monkeypatch):
    """What resolve_performance asks CUDA, answered as by a bf16-capable GPU."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    return monkeypatch


def test_auto_on_a_gpu(fake_gpu):
    conv = resolve_performance(AUTO, CUDA, True, 1024)
    assert conv == Performance(autocast=True, channels_last=True, fused_optimizer=True, compile=False,
                               inference_batch_size=engine.compute.train.INFERENCE_BATCH_GPU, cuda_graphs=True)  # fmt: skip
    flat = resolve_performance(AUTO, CUDA, False, 10_000)
    assert flat.channels_last is False and flat.autocast and flat.fused_optimizer
    assert flat.inference_batch_size == 10_000  # a larger eval.batch_size is kept
    assert resolve_performance({**AUTO, "compile": "auto"}, CUDA, True, 1024).compile is True
    assert resolve_performance({**AUTO, "compile": "auto"}, CUDA, False, 1024).compile is False
    assert flat.cuda_graphs is True  # on CUDA for every model, unless compiled
    compiled = resolve_performance({**AUTO, "compile": True}, CUDA, True, 1024)
    assert compiled.compile is True and compiled.cuda_graphs is False
    graphed = resolve_performance({**AUTO, "compile": "auto", "cuda_graphs": True}, CUDA, True, 1024)
    assert graphed.compile is False and graphed.cuda_graphs is True
    assert resolve_performance({**AUTO, "cuda_graphs": False}, CUDA, True, 1024).cuda_graphs is False


def test_cuda_graphs_and_compile_both_true_is_refused():
    with pytest.raises(ConfigError, match="'performance.cuda_graphs' and 'performance.compile'.*cannot both be true"):
        resolve_performance({**AUTO, "compile": True, "cuda_graphs": True}, CPU, True, 1024)


def test_a_saved_performance_section_without_cuda_graphs_still_validates():
    old = copy.deepcopy(DEFAULTS)
    del old["performance"]["cuda_graphs"]
    assert validate(old).performance.cuda_graphs == "auto"


def test_auto_autocast_is_off_and_true_is_refused_on_a_gpu_without_bf16(fake_gpu):
    fake_gpu.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_performance(AUTO, CUDA, True, 1024).autocast is False
    with pytest.raises(ConfigError, match="'performance.autocast'.*Fake GPU does not support bf16"):
        resolve_performance({**AUTO, "autocast": True}, CUDA, True, 1024)


# --- each option computes what the plain path computes ----------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_optimizer_matches_the_plain_one(optimizer):
    x, y = data(72, (1, 4, 4))
    model = mlp()
    plain, plain_stats = train(model, x, y, PLAIN, optimizer)
    fused, fused_stats = train(model, x, y, Performance(fused_optimizer=True), optimizer)
    assert make_optimizer(model, optimizer, 0.1, 0.0, 0.9, fused=True).defaults["fused"] is True
    assert fused_stats.steps == plain_stats.steps == 10
    assert fused_stats.train_loss == pytest.approx(plain_stats.train_loss, rel=1e-5)
    assert max_difference(fused.parameters(), plain.parameters()) < 1e-5


def test_channels_last_matches_the_plain_path():
    x, y = data(40, (3, 8, 8))
    model = resnet()
    plain, plain_stats = train(model, x, y, PLAIN)
    option = Performance(channels_last=True)
    fast, fast_stats = train(model, x, y, option)
    conv = fast.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast_stats.train_loss == pytest.approx(plain_stats.train_loss, rel=1e-4)
    assert fast_stats.train_acc == plain_stats.train_acc
    assert max_difference(fast.parameters(), plain.parameters()) < 1e-4
    # BatchNorm re-estimation and evaluation with channels_last inputs
    assert precise_bn(plain, x, 16) and precise_bn(fast, x, 16, performance=option)
    assert max_difference(fast.buffers(), plain.buffers()) < 1e-4
    acc, loss = evaluate(plain, x, y, 32)
    fast_acc, fast_loss = evaluate(fast, x, y, 32, option)
    assert fast_acc == acc and fast_loss == pytest.approx(loss, rel=1e-4)


def update_error(initial, a, b) -> float:
    """|| (a - initial) - (b - initial) || / || b - initial ||: how far a's training step
    is from b's, relative to b's, over all parameters."""
    flat = lambda m: torch.cat([p.detach().float().reshape(-1) for p in m.parameters()])  # noqa: E731
    start = flat(initial)
    return ((flat(a) - flat(b)).norm() / (flat(b) - start).norm()).item()


def test_bf16_autocast_is_close_to_the_plain_path_mlp():
    """SGD, so that a parameter's change is proportional to its gradient (Adam's sign-like
    steps turn bf16 rounding of a near-zero gradient into a full step)."""
    x, y = data(40, (3, 8, 8))
    model = mlp((3, 8, 8))
    plain, plain_stats = train(model, x, y, PLAIN, "sgd", epochs=2)
    option = Performance(autocast=True)
    bf16, bf16_stats = train(model, x, y, option, "sgd", epochs=2)
    # bf16 keeps 8 bits of mantissa, about 3 significant digits (measured here: 0.004)
    assert bf16_stats.train_loss == pytest.approx(plain_stats.train_loss, rel=0.01)
    assert update_error(model, bf16, plain) < 0.05
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # autocast never casts the weights
    acc, loss = evaluate(plain, x, y, 32)
    bf16_acc, bf16_loss = evaluate(bf16, x, y, 32, option)
    assert bf16_loss == pytest.approx(loss, rel=0.01) and abs(bf16_acc - acc) <= 0.05


def test_bf16_autocast_is_close_to_the_plain_path_resnet():
    """One SGD step of a BatchNorm ResNet: the loss agrees to bf16 precision, the step only
    roughly.  Train-mode BatchNorm's backward subtracts nearly equal terms, so at random
    init the gradients near the input keep little of bf16's precision: measured here, a
    relative error of the whole step of about 0.3 (float16: 0.11; in eval mode 0.03)."""
    x, y = data(32, (3, 8, 8))
    model = resnet(width=8)
    plain, plain_stats = train(model, x, y, PLAIN, "sgd", epochs=1, batch_size=32)
    option = Performance(autocast=True)
    dtypes = []
    conv = model.features[0]
    hook = conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    bf16, bf16_stats = train(model, x, y, option, "sgd", epochs=1, batch_size=32)
    hook.remove()
    assert dtypes == [torch.bfloat16]  # the deep copy trained under autocast, one step
    assert bf16_stats.train_loss == pytest.approx(plain_stats.train_loss, rel=0.01)
    assert update_error(model, bf16, plain) < 0.5
    acc, loss = evaluate(plain, x, y, 32)
    bf16_acc, bf16_loss = evaluate(bf16, x, y, 32, option)
    assert bf16_loss == pytest.approx(loss, rel=0.02) and abs(bf16_acc - acc) <= 0.1


def test_scoring_with_performance_options():
    """margin's pool outputs: channels_last tightly, bf16 loosely, the same as plain."""
    model = resnet()
    pool, _ = data(50, (3, 8, 8), seed=1)
    positions = torch.arange(3, 50, 2)
    margin = ACQUISITION_STRATEGIES.get("margin")
    plain = pool_outputs(model, pool, margin.extra["needs"], 16, positions=positions)
    assert plain.probs.shape == (positions.shape[0], 10)
    model_cl = Performance(channels_last=True).prepare(copy.deepcopy(model))
    fast = pool_outputs(
        model_cl, pool, ("probs",), 16, positions=positions, performance=Performance(channels_last=True)
    )
    torch.testing.assert_close(fast.probs, plain.probs, rtol=1e-4, atol=1e-5)
    bf16 = pool_outputs(model, pool, ("probs", "embeddings"), 16, positions=positions, performance=Performance(True))
    assert bf16.probs.dtype == bf16.embeddings.dtype == torch.float32
    torch.testing.assert_close(bf16.probs, plain.probs, rtol=0.05, atol=0.02)
    # a larger inference batch gives the same outputs
    big = pool_outputs(model, pool, ("probs",), 4096, positions=positions)
    torch.testing.assert_close(big.probs, plain.probs, rtol=1e-5, atol=1e-6)
    k = 5
    rng = np.random.default_rng(0)
    assert len(margin.fn(fast, k, rng)) == k


def test_no_host_sync_per_step_with_options(monkeypatch, count_host_reads):
    """The options add no host read per step (the plain path has its own test in test_train)."""
    x, y = data(128, (3, 8, 8), seed=3)
    model = resnet()
    option = Performance(autocast=True, channels_last=True, fused_optimizer=True)
    optimizer = make_optimizer(model, "adam", 1e-3, 0.0, 0.9, fused=True)
    reads = count_host_reads()
    stats = fit(model, x, y, optimizer, 32, convergence(2), seed=0, performance=option)
    monkeypatch.undo()
    state = {id(t) for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)}
    engine_reads = [name for name, tensor in reads if id(tensor) not in state]
    assert stats.steps == 8 and len(engine_reads) <= stats.epochs, engine_reads[:10]


# --- torch.compile: fixed batch shapes, no recompile as the training set grows ----------------


def test_compile_matches_eager_and_does_not_recompile_when_the_training_set_grows():
    """Two rounds, as the round loop makes them: a new model object each, training sets of 40
    then 70 samples with batch 16 (last batches of 8, then 6, run eagerly).  The second
    fit compiles nothing (dynamo raises on any recompile) and both match eager tightly."""
    torch._dynamo.reset()
    counters.clear()
    option = Performance(compile=True)
    shape = (1, 4, 4)
    first_x, first_y = data(40, shape, seed=1)
    second_x, second_y = data(70, shape, seed=2)

    first = mlp(shape, seed=1)
    eager, eager_stats = train(first, first_x, first_y, PLAIN)
    compiled, compiled_stats = train(first, first_x, first_y, option)
    assert counters["stats"]["unique_graphs"] >= 1, "fit did not compile"
    graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
    assert compiled_stats.train_loss == pytest.approx(eager_stats.train_loss, rel=1e-5)
    assert max_difference(compiled.parameters(), eager.parameters()) < 1e-5

    second = mlp(shape, seed=2)  # the next round: another model object, another size
    eager, eager_stats = train(second, second_x, second_y, PLAIN, seed=5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, compiled_stats = train(second, second_x, second_y, option, seed=5)
    assert (counters["stats"]["unique_graphs"], counters["frames"]["total"]) == (graphs, frames)
    assert compiled_stats.steps == eager_stats.steps == 10
    assert compiled_stats.train_loss == pytest.approx(eager_stats.train_loss, rel=1e-5)
    assert max_difference(compiled.parameters(), eager.parameters()) < 1e-5
    torch._dynamo.reset()


# --- the round loop records the effective options ---------------------------------------------


def test_rows_record_the_effective_options(tmp_path):
    import pandas as pd

    sets = ["device=cpu", "rounds.max_rounds=2", "convergence.max_epochs=3", "acquisition.name=margin"]
    results = {}
    for name, extra in (("auto", []), ("on", ["performance.fused_optimizer=true", "performance.channels_last=true"])):
        cfg = build(sets=sets + extra)
        out = tmp_path / name
        with Driver([start_trial(cfg, str(out), device=CPU)]) as driver:
            rows = driver.run()
        stored = pd.read_parquet(out).sort_values("round")
        assert list(stored["performance"]) == [r["performance"] for r in rows]
        results[name] = rows
    assert json.loads(results["auto"][0]["performance"]) == {
        "autocast": False,
        "channels_last": False,
        "fused_optimizer": False,
        "compile": False,
        "inference_batch_size": 1024,
        "cuda_graphs": False,
    }
    on = json.loads(results["on"][0]["performance"])
    assert on["fused_optimizer"] and on["channels_last"] and not on["autocast"]
    # fused Adam on an mlp: the same rounds, the same picks
    for plain_row, fast_row in zip(results["auto"], results["on"], strict=True):
        assert fast_row["acquired"] == plain_row["acquired"]
        assert fast_row["test_acc"] == pytest.approx(plain_row["test_acc"], abs=1e-9)
        assert fast_row["train_loss"] == pytest.approx(plain_row["train_loss"], rel=1e-4)


def test_each_cpu_capability_compiles_into_an_inductor_cache_of_its_own(monkeypatch):
    """torch's compile cache does not tell AVX-512 kernels from AVX2 ones: a run under
    ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU loaded the native run's code and trained to NaN
    (the test above, run after a native run).  A folder per capability, unless the user set one."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from engine.compute.train import inductor_cache_per_isa

    isa = torch.backends.cpu.get_cpu_capability().lower()
    for before in (None, default_cache_dir()):  # unset, or the default inductor wrote there on first use
        if before is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", before)
        inductor_cache_per_isa()
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(default_cache_dir(), f"warmstart-{isa}")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/the/users/own")
    inductor_cache_per_isa()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/the/users/own"
