"""strategies/: the registry, the init strategies, the acquisition strategies, and loading
users' plugins (engine/schema/plugins.py)."""

from __future__ import annotations

import hashlib
import linecache
import sys
import textwrap
import uuid
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from engine.compute.models import build_model
from engine.compute.scoring import pool_outputs
from engine.errors import ConfigError, StrategyError
from engine.schema import plugins
from engine.schema.registry import Origin, PluginChanged, PluginWarning, Registry, current_origin, origin_of
from strategies import acquisition, init
from strategies.acquisition import ACQUISITION_STRATEGIES, PoolOutputs, check_positions
from strategies.init import INIT_STRATEGIES, effective_mix


@pytest.fixture
def clean_registries(monkeypatch):
    """Strategies registered by a test vanish after it; plugins count as not yet loaded."""
    for registry in (ACQUISITION_STRATEGIES, INIT_STRATEGIES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(plugins, "_loaded", {})
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith(("warmstart_plugin_", "ws_test_plugin_")):
            del sys.modules[name]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# --- init strategies ---------------------------------------------------------------------


def bn_net(seed: int, stats: float) -> nn.Module:
    """A small network with BatchNorm whose running statistics are all ``stats``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():  # distinct affine parameters too, not BatchNorm's constant init
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    model[1].running_mean.fill_(stats)
    model[1].running_var.fill_(stats + 10)
    model[1].num_batches_tracked.fill_(int(stats) + 100)
    return model


def snapshot(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def apply_init(name: str, prev: nn.Module, fresh: nn.Module, **params) -> nn.Module:
    entry = INIT_STRATEGIES.get(name)
    return entry.fn(prev, fresh, **entry.resolve(params, "init strategy"))


def test_random_returns_fresh_and_warm_returns_prev():
    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    assert apply_init("random", prev, fresh) is fresh
    assert apply_init("warm", prev, fresh) is prev


@pytest.mark.parametrize(("shrink", "perturb"), [(0.4, 0.1), (0.3, 1e-4), (0.6, 0.01), (0.0, 0.5), (1.0, 2.0)])
@pytest.mark.parametrize("bn_stats", ["fresh", "keep"])
def test_shrink_perturb_mixes_parameters(shrink, perturb, bn_stats):
    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    prev_params, prev_buffers = snapshot(prev)
    fresh_params, fresh_buffers = snapshot(fresh)
    assert not any(torch.equal(a, b) for a, b in zip(prev_params, fresh_params, strict=True))

    model = apply_init("shrink_perturb", prev, fresh, shrink=shrink, perturb=perturb, bn_stats=bn_stats)

    for got, p, f in zip(model.parameters(), prev_params, fresh_params, strict=True):
        torch.testing.assert_close(got, shrink * p + perturb * f, rtol=1e-6, atol=1e-7)
    expected_buffers = fresh_buffers if bn_stats == "fresh" else prev_buffers
    for got, expected in zip(model.buffers(), expected_buffers, strict=True):
        assert torch.equal(got, expected)


def test_shrink_perturb_bn_stats_choose_the_running_statistics():
    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    model = apply_init("shrink_perturb", prev, fresh, bn_stats="fresh")
    assert torch.equal(model[1].running_mean, torch.full((3,), 2.0))
    assert torch.equal(model[1].running_var, torch.full((3,), 12.0))
    assert model[1].num_batches_tracked.item() == 102

    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    model = apply_init("shrink_perturb", prev, fresh, bn_stats="keep")
    assert torch.equal(model[1].running_mean, torch.full((3,), 1.0))
    assert torch.equal(model[1].running_var, torch.full((3,), 11.0))
    assert model[1].num_batches_tracked.item() == 101


def test_shrink_perturb_defaults_are_the_authors():
    assert INIT_STRATEGIES.get("shrink_perturb").resolve({}, "init strategy") == {
        "shrink": 0.4,
        "perturb": 0.1,
        "bn_stats": "fresh",
    }
    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    p0, f0 = next(prev.parameters()).detach().clone(), next(fresh.parameters()).detach().clone()
    model = apply_init("shrink_perturb", prev, fresh)
    torch.testing.assert_close(next(model.parameters()), 0.4 * p0 + 0.1 * f0)


@pytest.mark.parametrize("bn_stats", ["fresh", "keep"])
def test_shrink_perturb_extremes_are_random_and_warm(bn_stats):
    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    fresh_params, _ = snapshot(fresh)
    model = apply_init("shrink_perturb", prev, fresh, shrink=0.0, perturb=1.0, bn_stats=bn_stats)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_params, strict=True))

    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    prev_params, _ = snapshot(prev)
    model = apply_init("shrink_perturb", prev, fresh, shrink=1, perturb=0, bn_stats=bn_stats)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), prev_params, strict=True))


def test_shrink_perturb_on_a_resnet():
    torch.manual_seed(0)
    prev = build_model("resnet18", {"width": 4}, (1, 8, 8), 10)
    torch.manual_seed(1)
    fresh = build_model("resnet18", {"width": 4}, (1, 8, 8), 10)
    prev_params, _ = snapshot(prev)
    fresh_params, _ = snapshot(fresh)
    model = apply_init("shrink_perturb", prev, fresh, shrink=0.6, perturb=0.01)
    for got, p, f in zip(model.parameters(), prev_params, fresh_params, strict=True):
        torch.testing.assert_close(got, 0.6 * p + 0.01 * f)


def test_effective_mix():
    assert effective_mix("random", {}) == (0.0, 1.0)
    assert effective_mix("warm", {}) == (1.0, 0.0)
    assert effective_mix("shrink_perturb", {"shrink": 0.3, "perturb": 1e-4, "bn_stats": "keep"}) == (0.3, 1e-4)


# --- parameter validation -----------------------------------------------------------------


def resolve_init(name, params):
    return INIT_STRATEGIES.get(name).resolve(params, "init strategy")


def test_shrink_outside_the_unit_interval():
    with pytest.raises(ConfigError) as info:
        resolve_init("shrink_perturb", {"shrink": 1.5})
    assert str(info.value) == "The 'shrink' parameter of shrink_perturb must be a float in [0, 1]. Got 1.5."
    with pytest.raises(ConfigError, match="'shrink' parameter of shrink_perturb"):
        resolve_init("shrink_perturb", {"shrink": -0.1})


@pytest.mark.parametrize("bad", [True, "0.5", None, float("nan")])
def test_shrink_must_be_a_number(bad):
    with pytest.raises(ConfigError, match="'shrink' parameter of shrink_perturb must be a float in"):
        resolve_init("shrink_perturb", {"shrink": bad})


def test_negative_perturb():
    with pytest.raises(ConfigError) as info:
        resolve_init("shrink_perturb", {"perturb": -0.01})
    assert str(info.value) == "The 'perturb' parameter of shrink_perturb must be a float >= 0. Got -0.01."
    assert resolve_init("shrink_perturb", {"perturb": 0, "shrink": 1})["perturb"] == 0


def test_bn_stats_choices():
    with pytest.raises(ConfigError) as info:
        resolve_init("shrink_perturb", {"bn_stats": "other"})
    assert str(info.value) == "The 'bn_stats' parameter of shrink_perturb must be one of 'fresh', 'keep'. Got 'other'."
    assert resolve_init("shrink_perturb", {"bn_stats": "keep"})["bn_stats"] == "keep"


def test_unknown_parameter_shows_the_signature():
    with pytest.raises(ConfigError) as info:
        resolve_init("shrink_perturb", {"lambda": 0.5})
    message = str(info.value)
    assert "shrink_perturb(shrink=0.4, perturb=0.1, bn_stats='fresh')" in message
    assert "'lambda'" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"warm\(\)"):
        resolve_init("warm", {"shrink": 1.0})
    with pytest.raises(ConfigError, match=r"margin\(\)"):
        ACQUISITION_STRATEGIES.get("margin").resolve({"temperature": 2.0}, "acquisition strategy")


def test_unknown_strategy_names_list_the_known_ones():
    with pytest.raises(ConfigError) as info:
        INIT_STRATEGIES.get("hot_start")
    message = str(info.value)
    assert "'hot_start'" in message and "init strategy" in message
    for name in ("random", "shrink_perturb", "warm"):
        assert name in message
    with pytest.raises(ConfigError) as info:
        ACQUISITION_STRATEGIES.get("no_such_strategy")
    for name in ("margin", "random"):
        assert name in str(info.value)


# --- acquisition strategies --------------------------------------------------------------


def run_acquisition(name, outputs, k, seed=0, **params):
    entry = ACQUISITION_STRATEGIES.get(name)
    positions = entry.fn(outputs, k, np.random.default_rng(seed), **params)
    return check_positions(name, positions, k, outputs.n)


def test_builtin_needs():
    assert ACQUISITION_STRATEGIES.get("margin").extra["needs"] == ("probs",)
    assert ACQUISITION_STRATEGIES.get("random").extra["needs"] == ()


def test_margin_picks_the_smallest_top_two_gaps():
    probs = torch.tensor(
        [
            [0.90, 0.05, 0.05],  # 0: gap 0.85
            [0.50, 0.30, 0.20],  # 1: gap 0.20
            [0.40, 0.40, 0.20],  # 2: gap 0
            [0.10, 0.60, 0.30],  # 3: gap 0.30
            [0.20, 0.40, 0.40],  # 4: gap 0 (ties with 2)
            [0.20, 0.35, 0.45],  # 5: gap 0.10
            [0.00, 0.00, 1.00],  # 6: gap 1
        ]
    )
    outputs = PoolOutputs(7, probs=probs)
    assert run_acquisition("margin", outputs, 3).tolist() == [2, 4, 5]
    assert run_acquisition("margin", outputs, 1).tolist() == [2]  # the tie goes to the lower position
    assert run_acquisition("margin", outputs, 5).tolist() == [2, 4, 5, 1, 3]
    assert sorted(run_acquisition("margin", outputs, 7).tolist()) == list(range(7))


def test_margin_ties_resolve_to_lower_positions():
    row = [0.25, 0.25, 0.5]  # gap 0.25
    tied = [0.5, 0.5, 0.0]  # gap 0
    probs = torch.tensor([row, row, tied, row, tied, tied, row])
    outputs = PoolOutputs(7, probs=probs)
    assert run_acquisition("margin", outputs, 2).tolist() == [2, 4]
    assert run_acquisition("margin", outputs, 5).tolist() == [2, 4, 5, 0, 1]


def test_margin_ties_on_a_large_pool():
    """Many exact ties: the order is by gap, then by pool position (a stable sort)."""
    templates = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.6, 0.3, 0.1]])  # gaps 0, 0.25, 0.3
    kind = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(0))
    outputs = PoolOutputs(300, probs=templates[kind])
    expected = sorted(range(300), key=lambda i: (int(kind[i]), i))[:200]
    assert run_acquisition("margin", outputs, 200).tolist() == expected


def test_margin_matches_a_reference_and_ignores_the_rng():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 10, generator=g) * 3, dim=1)
    top2 = np.sort(probs.numpy(), axis=1)[:, -2:]
    expected = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:17]
    outputs = PoolOutputs(200, probs=probs)
    assert run_acquisition("margin", outputs, 17, seed=0).tolist() == expected.tolist()
    assert run_acquisition("margin", outputs, 17, seed=99).tolist() == expected.tolist()


def test_random_acquisition_is_distinct_and_reproducible():
    outputs = PoolOutputs(50)
    first = run_acquisition("random", outputs, 20, seed=3)
    assert len(set(first.tolist())) == 20 and first.min() >= 0 and first.max() < 50
    assert run_acquisition("random", outputs, 20, seed=3).tolist() == first.tolist()
    assert run_acquisition("random", outputs, 20, seed=4).tolist() != first.tolist()
    assert sorted(run_acquisition("random", outputs, 50, seed=3).tolist()) == list(range(50))


def test_check_positions_accepts_lists_arrays_and_tensors():
    for positions in ([3, 0, 4], np.array([3, 0, 4], dtype=np.int32), torch.tensor([3, 0, 4])):
        result = check_positions("s", positions, 3, 5)
        assert result.dtype == np.int64 and result.tolist() == [3, 0, 4]


@pytest.mark.parametrize(
    ("positions", "match"),
    [
        ([0, 1], r"expected 3 distinct integer positions in 0\.\.4, got an array of shape \(2,\)"),
        ([0, 1, 2, 3], r"expected 3 distinct .*shape \(4,\)"),
        ([[0, 1, 2]], r"expected 3 distinct .*shape \(1, 3\)"),
        ([0.0, 1.0, 2.0], r"expected 3 distinct .*dtype float64"),
        ([0, 1, 1], "got 1 repeated"),
        ([0, 1, 5], "got positions from 0 to 5"),
        ([-1, 1, 2], "got positions from -1 to 2"),
    ],
)
def test_check_positions_rejects_bad_answers(positions, match):
    with pytest.raises(StrategyError, match=match) as info:
        check_positions("mine", positions, 3, 5)
    assert "'mine'" in str(info.value)


def test_pool_outputs_computes_only_what_is_declared():
    torch.manual_seed(0)
    model = build_model("mlp", {"width": 8}, (1, 4, 4), 5)
    x = torch.randn(11, 1, 4, 4)
    with torch.no_grad():
        logits = model(x)
        embeddings = model.features(x)
    only_probs = pool_outputs(model, x, ("probs",), batch_size=4)
    assert only_probs.n == 11 and only_probs.logits is None and only_probs.embeddings is None
    torch.testing.assert_close(only_probs.probs, torch.softmax(logits, 1))  # in pool order
    both = pool_outputs(model, x, ("embeddings", "logits"), batch_size=3)
    assert both.probs is None
    torch.testing.assert_close(both.embeddings, embeddings)
    torch.testing.assert_close(both.logits, logits)
    nothing = pool_outputs(model, x, (), batch_size=4)
    assert nothing.n == 11 and nothing.probs is None and nothing.logits is None and nothing.embeddings is None


# --- users' strategies -------------------------------------------------------------------


@pytest.mark.usefixtures("clean_registries")
def test_register_a_user_acquisition_strategy():
    from strategies.acquisition import register

    name = unique("least_confident")

    @register(name, needs=("probs",))
    def least_confident(outputs, k, rng, temperature: float = 1.0):
        """Lowest top probability first."""
        return torch.argsort(outputs.probs.max(1).values / temperature)[:k]

    assert callable(least_confident) and least_confident.__name__ == "least_confident"
    entry = ACQUISITION_STRATEGIES.get(name)
    assert entry.extra["needs"] == ("probs",)
    assert entry.doc == "Lowest top probability first."
    assert entry.resolve({}, "acquisition strategy") == {"temperature": 1.0}
    with pytest.raises(ConfigError, match=rf"{name}\(temperature=1\.0\)"):
        entry.resolve({"temp": 2.0}, "acquisition strategy")
    with pytest.raises(ConfigError, match="'temperature' parameter"):
        entry.resolve({"temperature": "hot"}, "acquisition strategy")
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])
    assert run_acquisition(name, PoolOutputs(4, probs=probs), 2).tolist() == [2, 1]


@pytest.mark.usefixtures("clean_registries")
def test_register_with_an_unknown_need_is_refused():
    with pytest.raises(ValueError, match="'gradients'") as info:
        acquisition.register(unique("badge"), needs=("gradients",))
    for known in ("probs", "logits", "embeddings"):
        assert known in str(info.value)


@pytest.mark.usefixtures("clean_registries")
def test_strategy_parameters_need_defaults():
    with pytest.raises(TypeError, match="'beta'"):

        @acquisition.register(unique("nodefault"))
        def strategy(outputs, k, rng, beta):
            return []


def test_registry_refuses_constraints_for_unknown_parameters():
    registry = Registry("thing", n_inputs=1)
    with pytest.raises(TypeError, match="alpha"):
        registry.add("t", lambda x, beta=1.0: x, {"alpha": None})


def test_a_registry_of_built_ins_fills_itself_on_first_use_or_says_it_cannot():
    registry = Registry("gadget", n_inputs=1, has_builtins=True)
    with pytest.raises(RuntimeError, match=r"^No gadgets are registered yet: import engine.compute.builtins"):
        registry.names()
    fills = []

    def fill():  # what engine/compute/builtins.py hands over: the built-ins' module, imported
        fills.append("filled")
        registry.add("cog", lambda x, teeth=8: x)

    registry.fill_with(fill)
    assert "cog" in registry and registry.names() == ["cog"] and registry.get("cog").defaults == {"teeth": 8}
    assert fills == ["filled"]  # once


def test_a_fill_that_fails_is_tried_again_on_the_next_lookup():
    registry = Registry("gadget", n_inputs=1, has_builtins=True)
    tries = []
    registry.fill_with(lambda: tries.append(1) or 1 / 0)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            registry.get("cog")
    assert tries == [1, 1]


@pytest.mark.usefixtures("clean_registries")
def test_register_a_user_init_strategy():
    name = unique("halve")

    @init.register(name)
    def halve(prev, fresh, factor: float = 0.5):
        with torch.no_grad():
            for p in prev.parameters():
                p.mul_(factor)
        return prev

    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    before, _ = snapshot(prev)
    model = apply_init(name, prev, fresh, factor=0.25)
    for got, p in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(got, 0.25 * p)
    shrink, perturb = effective_mix(name, {"factor": 0.5})
    assert np.isnan(shrink) and np.isnan(perturb)  # no declared λ/σ


# --- plugins ----------------------------------------------------------------------------

PLUGIN = """
import torch
from strategies.acquisition import register
from strategies.init import register as register_init

with open({log!r}, "a") as f:
    f.write("imported\\n")


@register({acq!r}, needs=("logits",))
def last_k(outputs, k, rng, offset: int = 0):
    return list(range(outputs.n - k - offset, outputs.n - offset))


@register_init({ini!r}, effective=lambda p: (1.0, 0.0))
def copy_prev(prev, fresh):
    return prev
"""


def write_plugin(path, acq, ini, log):
    path.write_text(textwrap.dedent(PLUGIN.format(acq=acq, ini=ini, log=str(log))))


@pytest.mark.usefixtures("clean_registries")
def test_load_plugin_from_a_file(tmp_path):
    acq, ini = unique("last_k"), unique("copy_prev")
    log = tmp_path / "imports.log"
    path = tmp_path / "my_strategies.py"
    write_plugin(path, acq, ini, log)
    assert acq not in ACQUISITION_STRATEGIES and ini not in INIT_STRATEGIES

    assert plugins.load_plugins([str(path)]) == [str(path)]

    entry = ACQUISITION_STRATEGIES.get(acq)
    assert entry.extra["needs"] == ("logits",)
    assert run_acquisition(acq, PoolOutputs(10), 3, offset=1).tolist() == [6, 7, 8]
    prev, fresh = bn_net(0, 1.0), bn_net(1, 2.0)
    assert apply_init(ini, prev, fresh) is prev
    assert effective_mix(ini, {}) == (1.0, 0.0)
    # Loaded once per process, however often it is named.
    plugins.load_plugins([str(path), str(path)])
    assert log.read_text() == "imported\n"


@pytest.mark.usefixtures("clean_registries")
def test_relative_plugin_path_is_made_absolute(tmp_path, monkeypatch):
    acq, ini = unique("last_k"), unique("copy_prev")
    write_plugin(tmp_path / "rel_plugin.py", acq, ini, tmp_path / "log")
    monkeypatch.chdir(tmp_path)
    assert plugins.load_plugins(["rel_plugin.py"]) == [str(tmp_path / "rel_plugin.py")]
    assert acq in ACQUISITION_STRATEGIES


@pytest.mark.usefixtures("clean_registries")
def test_two_plugin_files_with_the_same_name_do_not_clash(tmp_path):
    names = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        acq, ini = unique("last_k"), unique("copy_prev")
        write_plugin(tmp_path / folder / "strategies.py", acq, ini, tmp_path / "log")
        names.append((acq, ini))
    plugins.load_plugins([str(tmp_path / "a" / "strategies.py"), str(tmp_path / "b" / "strategies.py")])
    for acq, ini in names:
        assert acq in ACQUISITION_STRATEGIES and ini in INIT_STRATEGIES
    # The project's own strategies package is untouched.
    assert sys.modules["strategies"].__file__.endswith("strategies/__init__.py")


@pytest.mark.usefixtures("clean_registries")
def test_a_plugin_file_of_the_same_name_from_another_folder_replaces_its_names(tmp_path):
    """A plugin file is known by its name (as in the plugins column): the same file copied to
    another folder (a test's or a user's temporary folder) registers its names again instead
    of clashing with itself; silently when identical, with a warning when its code changed."""
    name = unique("moved")
    text = f'from strategies.acquisition import register\n@register("{name}")\ndef moved(outputs, k, rng):\n'
    for folder, body in (("a", "    return list(range(k))\n"), ("b", "    return list(range(k))\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.py").write_text(text + body)
    plugins.load_plugins([str(tmp_path / "a" / "mine.py")])
    first = ACQUISITION_STRATEGIES.get(name).origin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.load_plugins([str(tmp_path / "b" / "mine.py")])  # the same code from another folder: silent
    assert ACQUISITION_STRATEGIES.get(name).origin == first == Origin("mine.py", first.digest)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.py").write_text(text + "    return list(range(1, k + 1))\n")
    with pytest.warns(PluginChanged, match=f"{first.digest} -> "):
        plugins.load_plugins([str(tmp_path / "c" / "mine.py")])
    assert run_acquisition(name, PoolOutputs(10), 2).tolist() == [1, 2]
    (tmp_path / "other.py").write_text(text + "    return list(range(k))\n")
    with pytest.raises(ConfigError, match=f"'{name}' is already registered by mine.py"):
        plugins.load_plugins([str(tmp_path / "other.py")])  # another plugin's name: refused


@pytest.mark.usefixtures("clean_registries")
def test_load_plugin_by_module_name(tmp_path, monkeypatch):
    module = unique("ws_test_plugin")
    acq, ini = unique("last_k"), unique("copy_prev")
    write_plugin(tmp_path / f"{module}.py", acq, ini, tmp_path / "log")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert plugins.load_plugins([module]) == [module]

    assert acq in ACQUISITION_STRATEGIES and ini in INIT_STRATEGIES
    assert module in sys.modules


@pytest.mark.usefixtures("clean_registries")
def test_plugin_file_that_fails_to_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\nraise RuntimeError('boom at import')\n")
    with pytest.raises(ConfigError) as info:
        plugins.load_plugins([str(path)])
    message = str(info.value)
    assert "broken.py" in message and "boom at import" in message and "\n" not in message
    assert not any(name.startswith("warmstart_plugin_") and "broken" in str(m) for name, m in sys.modules.items())


@pytest.mark.usefixtures("clean_registries")
def test_plugin_file_with_a_syntax_error(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("def strategy(outputs, k, rng:\n    return []\n")
    with pytest.raises(ConfigError, match="typo.py"):
        plugins.load_plugins([str(path)])


@pytest.mark.usefixtures("clean_registries")
def test_missing_plugin_file_and_module(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        plugins.load_plugins([str(tmp_path / "nothere.py")])
    with pytest.raises(ConfigError, match="ws_test_plugin_absent"):
        plugins.load_plugins(["ws_test_plugin_absent"])


@pytest.mark.usefixtures("clean_registries")
def test_plugin_module_whose_dependency_is_missing(tmp_path, monkeypatch):
    module = unique("ws_test_plugin")
    (tmp_path / f"{module}.py").write_text("import ws_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="ws_no_such_dependency"):
        plugins.load_plugins([module])


@pytest.mark.parametrize(
    "body", ["raise RuntimeError('boom at import')\n", "def f(:\n    pass\n"], ids=["runtime_error", "syntax_error"]
)
@pytest.mark.usefixtures("clean_registries")
def test_plugin_module_that_fails_to_import(tmp_path, monkeypatch, body):
    module = unique("ws_test_plugin")
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=module):
        plugins.load_plugins([module])


# --- code identity: re-registration, clashes, the hash of a plugin's code -----------------


def notebook_cell(text: str, namespace: dict, number: int) -> None:
    """Run ``text`` as IPython runs a cell: in ``__main__``, its source kept in linecache
    under a cell name (where ``inspect.getsource`` finds it)."""
    name = f"<ipython-input-{number}-{uuid.uuid4().hex[:12]}>"
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    exec(compile(text, name, "exec"), namespace)


@pytest.mark.usefixtures("clean_registries")
def test_the_same_module_registering_a_name_again_replaces_it_warning_only_when_the_body_changed():
    name = unique("nb_pick")
    cell = f'@register("{name}")\ndef pick(outputs, k, rng):\n    return list(range({{start}}, {{start}} + k))\n'
    namespace = {"__name__": "__main__", "register": acquisition.register}
    first = cell.format(start=0)
    notebook_cell(first, namespace, 1)
    origin = ACQUISITION_STRATEGIES.get(name).origin
    assert origin == Origin("__main__.pick", hashlib.sha256(first.encode()).hexdigest()[:12])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the identical cell run again: no warning at all
        notebook_cell(first, namespace, 2)
    assert ACQUISITION_STRATEGIES.get(name).origin == origin

    second = cell.format(start=3)
    digest = hashlib.sha256(second.encode()).hexdigest()[:12]
    with pytest.warns(PluginChanged, match=rf"'{name}' replaced .* \(sha256 {origin.digest} -> {digest}\)"):
        notebook_cell(second, namespace, 3)
    assert ACQUISITION_STRATEGIES.get(name).origin.digest == digest
    assert run_acquisition(name, PoolOutputs(10), 2).tolist() == [3, 4]  # the new body runs


@pytest.mark.usefixtures("clean_registries")
def test_a_notebook_builders_identity_covers_the_main_functions_and_classes_it_calls():
    """Helpers of __main__ it names, directly or through each other (sorted by name), join its
    hash as they are now; functions of other modules (top_k) and unused ones do not."""
    name = unique("nb_helped")
    namespace = {"__name__": "__main__", "register": acquisition.register, "top_k": acquisition.top_k, "torch": torch}
    cell = f'@register("{name}")\ndef pick(outputs, k, rng):\n    return top_k(Scorer().scores(outputs.n), k)\n'
    scorer = "class Scorer:\n    def scores(self, n):\n        return weights(n)\n"
    weights = "def weights(n):\n    return torch.arange(n) * {sign}\n"
    unused = "def unused():\n    return 0\n"
    for number, text in enumerate([scorer, weights.format(sign=1), unused, cell]):
        notebook_cell(text, namespace, number)  # one namespace, as a notebook's cells share
    entry = ACQUISITION_STRATEGIES.get(name)

    # A class of a cell has no source before Python 3.13: its methods' stand for it.
    method = b"\0scores\0    def scores(self, n):\n        return weights(n)\n"
    scorer_code = scorer.encode() if sys.version_info >= (3, 13) else b"class Scorer" + method

    def expected(weights_text: str) -> str:
        helpers = b"\0Scorer\0" + scorer_code + b"\0weights\0" + weights_text.encode()
        return hashlib.sha256(cell.encode() + helpers).hexdigest()[:12]

    assert entry.origin == Origin("__main__.pick", expected(weights.format(sign=1)))
    assert run_acquisition(name, PoolOutputs(5), 2).tolist() == [4, 3]
    notebook_cell(weights.format(sign=-1), namespace, 20)  # the helper's cell edited and run again
    now = current_origin(entry.fn, entry.origin)
    assert now == Origin("__main__.pick", expected(weights.format(sign=-1))) != entry.origin
    assert run_acquisition(name, PoolOutputs(5), 2).tolist() == [0, 1]  # what runs now is the new helper
    notebook_cell(weights.format(sign=1), namespace, 21)
    assert current_origin(entry.fn, entry.origin) == entry.origin


@pytest.mark.usefixtures("clean_registries")
def test_a_name_another_module_registered_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        notebook_cell('@register("margin")\ndef margin(outputs, k, rng):\n    return []\n',
                      {"__name__": "__main__", "register": acquisition.register}, 1)  # fmt: skip
    assert str(info.value) == (
        "The acquisition strategy 'margin' is already registered by a built-in (strategies.acquisition); choose "
        "another name, or register it with override=True to replace it."
    )
    name = unique("taken")
    (tmp_path / "first.py").write_text(f"from strategies.acquisition import register\n@register('{name}')\n"
                                       "def a(outputs, k, rng):\n    return []\n")  # fmt: skip
    plugins.load_plugins([str(tmp_path / "first.py")])
    (tmp_path / "second.py").write_text((tmp_path / "first.py").read_text())
    with pytest.raises(ConfigError) as info:
        plugins.load_plugins([str(tmp_path / "second.py")])
    assert str(info.value).startswith(
        f"Plugin {tmp_path / 'second.py'}: The acquisition strategy '{name}' is already registered by first.py; "
    )


@pytest.mark.usefixtures("clean_registries")
def test_a_plugin_files_code_identity_is_its_content_wherever_it_lies(tmp_path):
    text = "from strategies.acquisition import register\n@register('{name}')\ndef a(outputs, k, rng):\n    return []\n"
    origins = []
    for folder in ("here", "there"):
        (tmp_path / folder).mkdir()
        name = unique("where")
        (tmp_path / folder / "mine.py").write_text(text.format(name=name))
        plugins.load_plugins([str(tmp_path / folder / "mine.py")])
        origins.append((ACQUISITION_STRATEGIES.get(name).origin, (tmp_path / folder / "mine.py").read_bytes()))
    for origin, content in origins:
        assert origin == Origin("mine.py", hashlib.sha256(content).hexdigest()[:12])
    assert origin_of(acquisition.register) is None and ACQUISITION_STRATEGIES.get("margin").origin is None


@pytest.mark.usefixtures("clean_registries")
@pytest.mark.parametrize("as_module", [False, True], ids=["file", "module"])
def test_an_edited_plugin_is_imported_again_and_replaces_its_strategies(tmp_path, monkeypatch, as_module):
    name, module = unique("edited"), unique("ws_test_plugin")
    path = tmp_path / f"{module}.py"
    text = f"from strategies.acquisition import register\n@register('{name}')\ndef pick(outputs, k, rng):\n"
    path.write_text(text + "    return list(range(k))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = module if as_module else str(path)
    plugins.load_plugins([spec])
    old = ACQUISITION_STRATEGIES.get(name).origin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.load_plugins([spec])  # unchanged: not imported again
    path.write_text(text + "    return list(range(2, k + 2))\n")
    new = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    with pytest.warns(PluginChanged, match=f"{old.digest} -> {new}"):
        plugins.load_plugins([spec])
    assert ACQUISITION_STRATEGIES.get(name).origin == Origin(f"{module}.py" if not as_module else module, new)
    assert run_acquisition(name, PoolOutputs(10), 2).tolist() == [2, 3]


@pytest.mark.usefixtures("clean_registries")
def test_a_function_without_source_is_identified_by_its_bytecode_with_a_warning():
    name = unique("nosource")
    text = f'@register("{name}")\ndef blind(outputs, k, rng):\n    return list(range({{start}}, {{start}} + k))\n'
    namespace = {"__name__": "__main__", "register": acquisition.register}
    with pytest.warns(PluginWarning, match="has no source Python can read; .* by its bytecode"):
        exec(compile(text.format(start=0), "<string>", "exec"), namespace)
    first = ACQUISITION_STRATEGIES.get(name).origin
    assert first.key == "__main__.blind" and not first.exact
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same code again, even from another file name: silent
        exec(compile(text.format(start=0), "<other>", "exec"), namespace)
    assert ACQUISITION_STRATEGIES.get(name).origin == first
    with pytest.warns(PluginChanged, match=f"sha256 {first.digest} -> "):
        exec(compile(text.format(start=1), "<string>", "exec"), namespace)
    assert ACQUISITION_STRATEGIES.get(name).origin.digest != first.digest


@pytest.mark.parametrize("k", [1, 5, 37, 200, 256])
def test_top_k_is_the_head_of_a_stable_descending_sort(k):
    """top_k's shortcut (the k-th value by topk, then ties by position) equals the full sort,
    on scores with many exact ties, with NaN, and at k = N."""
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 7, (256,), generator=g).double() / 7  # heavy ties
    reference = torch.sort(scores, descending=True, stable=True).indices[:k]
    assert acquisition.top_k(scores, k).tolist() == reference.tolist()
    scores[::17] = float("nan")
    reference = torch.sort(scores, descending=True, stable=True).indices[:k]
    assert acquisition.top_k(scores, k).tolist() == reference.tolist()
    distinct = torch.rand(256, generator=g)
    distinct[[3, 100, 200]] = float("nan")  # a few NaN: ranked first, as the sort ranks them
    reference = torch.sort(distinct, descending=True, stable=True).indices[:k]
    assert acquisition.top_k(distinct, k).tolist() == reference.tolist()


def test_margin_equals_the_top_two_gap_reference():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(500, 7, generator=g), 1)
    probs[10] = probs[11]  # exact duplicates tie
    probs[20, :2] = probs[20, :2].max()  # two classes share the top probability: gap 0
    top2 = probs.topk(2, dim=1).values
    expected = torch.sort(top2[:, 1] - top2[:, 0], descending=True, stable=True).indices[:40]
    assert run_acquisition("margin", PoolOutputs(500, probs=probs), 40).tolist() == expected.tolist()
