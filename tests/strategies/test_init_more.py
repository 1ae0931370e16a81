"""The init strategies beyond random, warm and shrink_perturb (strategies/init.py), each
tested for its definition with exact equalities on parameters and buffers, plus the
models' blocks and dropout parameter they and MC dropout rely on (engine/compute/models.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.compute.models import MODELS, build_model
from engine.errors import ConfigError
from engine.schema.config import build
from engine.trial.loop import fresh_model
from strategies.init import INIT_STRATEGIES, effective_mix, noise_seed

CPU = torch.device("cpu")


def model(name: str, seed: int, **params) -> nn.Module:
    """A model with seeded parameters and, where it has BatchNorm, distinct non-default statistics."""
    torch.manual_seed(seed)
    shape = (3, 8, 8) if name == "resnet18" else (1, 8, 8)
    built = build_model(name, {"width": 4} if name == "resnet18" else {"width": 6} | params, shape, 5)
    with torch.no_grad():
        for m in built.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(seed + 7)
                m.weight.uniform_(0.5, 1.5)
    return built


def state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def apply_init(name: str, prev: nn.Module, fresh: nn.Module, **params) -> nn.Module:
    entry = INIT_STRATEGIES.get(name)
    return entry.fn(prev, fresh, **entry.resolve(params, "init strategy"))


def assert_state(got: nn.Module, expected: dict[str, torch.Tensor], keys) -> None:
    current = got.state_dict()
    for key in keys:
        assert torch.equal(current[key], expected[key]), key


# --- models: blocks and dropout -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "blocks"),
    [
        ("mlp", {}, [["features.1"], ["features.3"], ["features.5"], ["head"]]),
        ("mlp", {"depth": 2, "dropout": 0.3}, [["features.1"], ["features.4"], ["head"]]),
        (
            "resnet18",
            {"width": 4},
            [["features.0", "features.1"]] + [[f"features.{i}"] for i in range(3, 11)] + [["head"]],
        ),
        ("resnet18", {"width": 4, "dropout": 0.1}, None),
        ("logreg", {}, [["head"]]),
    ],
)
def test_blocks_cover_every_parameter_and_buffer_once(name, params, blocks):
    built = build_model(name, params, (3, 8, 8), 5)
    if blocks is not None:
        assert [list(b) for b in built.blocks] == blocks
    full = {**MODELS.get(name).defaults, **params}
    assert len(built.blocks) == MODELS.get(name).extra["n_blocks"](full)
    assert built.blocks[-1] == ("head",)
    for key in built.state_dict():
        owners = [i for i, group in enumerate(built.blocks) if any(key.startswith(n + ".") for n in group)]
        assert len(owners) == 1, key
    # Input to output: the blocks' first parameters appear in the model's parameter order.
    order = [k for k, _ in built.named_parameters()]
    firsts = [min(order.index(k) for k in order if any(k.startswith(n + ".") for n in group)) for group in built.blocks]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_dropout_zero_is_the_network_without_dropout(name):
    """Default 0.0: no Dropout module, the same state_dict keys and values as before, and a
    positive dropout draws the same initial parameters (dropout has none)."""
    shape, params = ((3, 8, 8), {"width": 4}) if name == "resnet18" else ((1, 8, 8), {})
    torch.manual_seed(0)
    plain = build_model(name, params, shape, 10)
    torch.manual_seed(0)
    dropped = build_model(name, {**params, "dropout": 0.25}, shape, 10)
    assert MODELS.get(name).defaults["dropout"] == 0.0
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.25] * (3 if name == "mlp" else 1)
    if name == "resnet18":
        assert plain.state_dict().keys() == dropped.state_dict().keys()
    for a, b in zip(plain.parameters(), dropped.parameters(), strict=True):
        assert torch.equal(a, b)
    plain.eval(), dropped.eval()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(plain(x), dropped(x))  # eval mode: dropout is the identity


def test_dropout_values_are_checked():
    with pytest.raises(ConfigError, match=r"The 'dropout' parameter of mlp must be a float in \[0, 1\)\. Got 1\.0\."):
        MODELS.get("mlp").resolve({"dropout": 1.0}, "model")
    with pytest.raises(ConfigError, match="'dropout' parameter of resnet18"):
        MODELS.get("resnet18").resolve({"dropout": -0.1}, "model")


# --- reset_head ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_reset_head_is_warm_start_with_a_fresh_head(name):
    prev, fresh = model(name, 0), model(name, 1)
    before, fresh_state = state(prev), state(fresh)
    result = apply_init("reset_head", prev, fresh)
    assert result is prev
    body = [k for k in before if not k.startswith("head.")]
    assert body and {"head.weight", "head.bias"} <= set(before)
    assert_state(result, before, body)  # parameters and BatchNorm statistics continue
    assert_state(result, fresh_state, ["head.weight", "head.bias"])
    assert not torch.equal(before["head.weight"], fresh_state["head.weight"])
    assert INIT_STRATEGIES.get("reset_head").defaults == {}
    assert all(math.isnan(v) for v in effective_mix("reset_head", {}))


# --- shrink_perturb_gaussian -------------------------------------------------------------------------


def expected_noise(fresh: nn.Module) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(noise_seed(fresh))
    return [torch.randn(p.shape, generator=generator) for p in fresh.parameters()]


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
@pytest.mark.parametrize(("shrink", "perturb"), [(0.4, 0.01), (0.3, 1e-4), (1.0, 0.5)])
def test_shrink_perturb_gaussian_is_shrink_plus_gaussian_noise(name, shrink, perturb):
    prev, fresh = model(name, 0), model(name, 1)
    prev_params = [p.detach().clone() for p in prev.parameters()]
    noise = expected_noise(fresh)
    result = apply_init("shrink_perturb_gaussian", prev, fresh, shrink=shrink, perturb=perturb, bn_stats="keep")
    assert result is prev
    for got, p, eps in zip(result.parameters(), prev_params, noise, strict=True):
        assert torch.equal(got, shrink * p + perturb * eps)


def test_shrink_perturb_gaussian_noise_is_standard_normal_scaled_by_perturb():
    prev, fresh = model("mlp", 0, width=200), model("mlp", 1, width=200)
    weight = prev.features[3].weight.detach().clone()  # 200 x 200
    result = apply_init("shrink_perturb_gaussian", prev, fresh, shrink=0.5, perturb=0.01)
    noise = result.features[3].weight.detach() - 0.5 * weight
    assert abs(noise.mean().item()) < 0.01 * 0.02
    assert noise.std().item() == pytest.approx(0.01, rel=0.02)
    # Noise of a fixed scale, unlike shrink_perturb's perturb * θ_fresh (which follows each layer's init).
    assert not torch.allclose(noise, 0.01 * fresh.features[3].weight.detach(), atol=1e-4)


def test_shrink_perturb_gaussian_bn_stats_and_zero_noise():
    prev, fresh = model("resnet18", 0), model("resnet18", 1)
    prev_state, fresh_state = state(prev), state(fresh)
    result = apply_init("shrink_perturb_gaussian", prev, fresh, shrink=0.6, perturb=0.0)
    assert result is fresh  # bn_stats="fresh" (the default), as shrink_perturb
    buffers = [k for k, _ in fresh.named_buffers()]
    assert_state(result, fresh_state, buffers)
    for key, p in result.named_parameters():
        assert torch.equal(p, 0.6 * prev_state[key]), key  # σ = 0: shrink only, exactly

    prev, fresh = model("resnet18", 0), model("resnet18", 1)
    result = apply_init("shrink_perturb_gaussian", prev, fresh, bn_stats="keep")
    assert result is prev
    assert_state(result, prev_state, buffers)


def test_shrink_perturb_gaussian_noise_is_deterministic_per_seed_and_round():
    cfg = build(sets=["device=cpu", "model.width=8", "seed=3"])
    data = SimpleNamespace(input_shape=(1, 8, 8), num_classes=10)  # all fresh_model reads
    seeds = [noise_seed(fresh_model(cfg, data, r, CPU)) for r in (2, 2, 3)]
    assert seeds[0] == seeds[1] != seeds[2]
    other = build(sets=["device=cpu", "model.width=8", "seed=4"])
    assert noise_seed(fresh_model(other, data, 2, CPU)) != seeds[0]

    def mixed(round_: int) -> list[torch.Tensor]:
        prev = fresh_model(cfg, data, 1, CPU)
        result = apply_init("shrink_perturb_gaussian", prev, fresh_model(cfg, data, round_, CPU))
        return [p.detach().clone() for p in result.parameters()]

    a, b, c = mixed(2), mixed(2), mixed(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_shrink_perturb_gaussian_defaults_and_effective_mix():
    entry = INIT_STRATEGIES.get("shrink_perturb_gaussian")
    assert entry.resolve({}, "init strategy") == {"shrink": 0.4, "perturb": 0.01, "bn_stats": "fresh"}
    shrink, perturb = effective_mix("shrink_perturb_gaussian", {"shrink": 0.3, "perturb": 1e-4, "bn_stats": "fresh"})
    assert shrink == 0.3 and math.isnan(perturb)  # σ is a noise scale, not a mix with a fresh model
    assert effective_mix("shrink_perturb_gaussian", {"shrink": 0.7, "perturb": 0.0, "bn_stats": "fresh"}) == (0.7, 0.0)
    with pytest.raises(
        ConfigError, match=r"^The 'perturb' parameter of shrink_perturb_gaussian must be a float >= 0\."
    ):
        entry.resolve({"perturb": -1.0}, "init strategy")


# --- warm_partial --------------------------------------------------------------------------------------


def owned(m: nn.Module, groups) -> list[str]:
    names = [n for group in groups for n in group]
    return [k for k in m.state_dict() if any(k.startswith(n + ".") for n in names)]


@pytest.mark.parametrize(("name", "n_blocks"), [("mlp", 4), ("resnet18", 10)])
@pytest.mark.parametrize("blocks", [None, 0, 1, 3, "all"])
def test_warm_partial_warms_the_first_blocks_and_keeps_the_rest_fresh(name, n_blocks, blocks):
    prev, fresh = model(name, 0), model(name, 1)
    prev_state, fresh_state = state(prev), state(fresh)
    n_warm = n_blocks // 2 if blocks is None else n_blocks if blocks == "all" else blocks
    result = apply_init("warm_partial", prev, fresh, **({} if blocks is None else {"blocks": n_warm}))
    assert result is fresh
    warm, cold = owned(result, fresh.blocks[:n_warm]), owned(result, fresh.blocks[n_warm:])
    assert sorted(warm + cold) == sorted(prev_state)
    assert_state(result, prev_state, warm)  # parameters and BatchNorm statistics of the warm blocks
    assert_state(result, fresh_state, cold)


def test_warm_partial_default_is_half_the_blocks():
    prev, fresh = model("resnet18", 0), model("resnet18", 1)
    prev_state = state(prev)
    result = apply_init("warm_partial", prev, fresh)
    # resnet18: stem + the first four BasicBlocks (stages 1 and 2) warm; stages 3, 4 and the head fresh.
    assert_state(
        result, prev_state, [k for k in prev_state if k.split(".")[0] == "features" and int(k.split(".")[1]) <= 6]
    )
    assert not torch.equal(result.state_dict()["features.7.conv1.weight"], prev_state["features.7.conv1.weight"])
    assert INIT_STRATEGIES.get("warm_partial").resolve({}, "init strategy") == {"blocks": None}


def test_warm_partial_extremes_are_random_warm_and_reset_head():
    prev, fresh = model("resnet18", 0), model("resnet18", 1)
    reset = apply_init("reset_head", model("resnet18", 0), model("resnet18", 1))
    partial = apply_init("warm_partial", prev, fresh, blocks=9)
    for key, value in reset.state_dict().items():
        assert torch.equal(partial.state_dict()[key], value), key
    assert effective_mix("warm_partial", {"blocks": 0}) == (0.0, 1.0)
    assert all(math.isnan(v) for v in effective_mix("warm_partial", {"blocks": 3}))


def test_warm_partial_blocks_are_checked_against_the_model_when_the_config_is_built():
    with pytest.raises(ConfigError) as info:
        build(sets=["model.name=resnet18", "init={name: warm_partial, blocks: 11}"])
    assert str(info.value) == (
        "The 'blocks' parameter of warm_partial must be at most 10, the number of blocks of resnet18 here. Got 11."
    )
    with pytest.raises(ConfigError, match="at most 3, the number of blocks of mlp"):
        build(sets=["model.depth=2", "init={name: warm_partial, blocks: 4}"])
    assert build(sets=["model.depth=2", "init={name: warm_partial, blocks: 3}"]).init.blocks == 3
    with pytest.raises(
        ConfigError, match=r"The 'blocks' parameter of warm_partial must be null or an int >= 0\. Got -1\."
    ):
        build(sets=["init={name: warm_partial, blocks: -1}"])
    with pytest.raises(ConfigError, match="must be null or an int >= 0"):
        build(sets=["init={name: warm_partial, blocks: 1.5}"])
