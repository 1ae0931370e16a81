"""The shipped suite files (engine/suites/) and cluster.yaml: every suite expands
into valid, distinct trials; its size is what its header says; the paper's settings
hold, and the MNIST-1D suites' (quickstart, the (λ, σ) sweep, fig7_mnist1d); cluster.yaml
is a Ray cluster launcher config.  No dataset is read and no Ray instance is started."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from engine.compute.data import pool_size
from engine.suite.suite_file import SUITES_DIR, load_suite
from engine.trial.setup import plan_rounds

ROOT = Path(__file__).resolve().parents[2]
SUITE_FILES = sorted(SUITES_DIR.glob("*.yaml"))

# Trials per suite, as each file's header states them.
TRIALS = {
    "quickstart": 18,
    "fig7_mnist1d": 18,
    "mnist1d_sp_sweep": 33,
    "table1": 108,
    "fig2_online": 6,
    "fig7_shrink": 39,
    "fig8_grid": 171,
    "active_margin": 9,
}
# Rounds per trial (the plan for the dataset's pool: 2/3 of the training split).
ROUNDS = {"table1": 2, "fig2_online": 34, "fig7_shrink": 34, "fig8_grid": 34, "active_margin": 34}
PAPER_SUITES = sorted(ROUNDS)
# Training-split sizes, so round plans are checked without reading any data.
N_TRAIN = {"digits": 1797, "cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257}
SEEDS = {0, 1, 2}
# The MNIST-1D suites (CPU, generated data): rounds per trial on the package's split.
MNIST1D_ROUNDS = {"quickstart": 4, "mnist1d_sp_sweep": 4, "fig7_mnist1d": 8}


def n_train(ds) -> int:
    if ds.name == "mnist1d":  # the package makes size // 10 per class, train_split of them for training
        return int(10 * (ds.size // 10) * ds.train_split)
    return N_TRAIN[ds.name]


@pytest.fixture(scope="module")
def suites():
    return {path.stem: load_suite(str(path)) for path in SUITE_FILES}


def header(path: Path) -> str:
    """The comment block that opens the file, without the '#' marks."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines)


def rounds_of(config) -> int:
    ds = config.dataset
    return plan_rounds(config, pool_size(n_train(ds), ds.eval, ds.holdout)).rounds


def by_init(suite, name: str) -> list:
    return [t.config for t in suite.trials if t.config.init.name == name]


# --- every shipped file ------------------------------------------------------------


def test_the_paper_suites_are_all_shipped():
    assert set(TRIALS) <= {p.stem for p in SUITE_FILES}


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.stem)
def test_suite_loads_with_unique_trials(path, suites):
    suite = suites[path.stem]
    assert suite.name == path.stem  # `warmstart suite NAME` finds it under its own name
    ids = [t.trial_id for t in suite.trials]
    assert len(ids) == len(set(ids))
    assert {t.config.suite for t in suite.trials} == {suite.name}
    if path.stem in TRIALS:
        assert len(suite.trials) == TRIALS[path.stem]
    # A named path is the same suite as the shipped name.
    assert [t.trial_id for t in load_suite(path.stem).trials] == ids


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.stem)
def test_header_comment_says_what_it_is(path):
    text = header(path)
    assert text.startswith(f"{path.stem}:"), "the header opens with the suite's name"
    if path.stem in PAPER_SUITES:
        assert re.search(r"\b(Figure|Table|Section) \d", text), "a paper suite names what it reproduces"
        assert "What the paper reports" in text
        assert "where they come from" in text


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_header_cost_matches_the_trials_and_rounds(name, suites):
    suite = suites[name]
    text = " ".join(header(SUITES_DIR / f"{name}.yaml").split())
    match = re.search(r"Cost: ([\d,]+) trials x (\d+) rounds = ([\d,]+) rounds", text)
    assert match, "the header states its cost as 'Cost: N trials x R rounds = T rounds'"
    trials, rounds, total = (int(g.replace(",", "")) for g in match.groups())
    assert trials == len(suite.trials) == TRIALS[name]
    assert {rounds_of(t.config) for t in suite.trials} == {rounds} == {ROUNDS[name]}
    assert total == trials * rounds


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_settings(name, suites):
    """DESIGN.md's paper defaults: batch 128, lr 1e-3, no weight decay, a random held-out
    third for evaluation, 99% training accuracy, ResNet-18 at the authors' width 16,
    3 seeds; each trial asks for a share of a GPU."""
    for trial in suites[name].trials:
        cfg = trial.config
        assert cfg.batch_size == 128
        assert cfg.optimizer.lr == 0.001 and cfg.optimizer.weight_decay == 0.0
        assert (cfg.dataset.eval, cfg.dataset.holdout) == ("holdout", 0.3333)
        assert cfg.convergence.train_acc == 0.99
        assert cfg.pretrain is None
        if cfg.model.name == "resnet18":
            assert cfg.model.width == 16
        assert 0 < cfg.scaling.gpus_per_worker <= 1 and cfg.scaling.workers is None
    assert {t.config.seed for t in suites[name].trials} == SEEDS


# --- the paper-specific facts --------------------------------------------------------


def test_table1_is_the_two_phase_cross_product(suites):
    suite = suites["table1"]
    cells = []
    for t in suite.trials:
        cfg = t.config
        assert (cfg.rounds.initial, cfg.rounds.per_round) == (0.5, 0.5)
        assert rounds_of(cfg) == 2
        assert cfg.acquisition.name == "random"
        cells.append((cfg.dataset.name, cfg.model.name, cfg.optimizer.name, cfg.init.name, cfg.seed))
    expected = itertools.product(
        ["cifar10", "cifar100", "svhn"], ["resnet18", "mlp", "logreg"], ["sgd", "adam"], ["random", "warm"], SEEDS
    )
    assert sorted(cells) == sorted(expected)  # every cell exactly once


def test_table1_models_and_their_stopping_rules(suites):
    for t in suites["table1"].trials:
        cfg = t.config
        if cfg.optimizer.name == "sgd":
            assert cfg.optimizer.momentum == 0.0  # plain SGD, as the authors' run.py
        if cfg.model.name == "logreg":  # cannot reach 99%: stop when training accuracy plateaus
            assert cfg.convergence.patience is not None and cfg.convergence.patience >= 1
        else:  # the threshold rule alone
            assert cfg.convergence.patience is None
        if cfg.model.name == "mlp":
            assert (cfg.model.depth, cfg.model.width, cfg.model.activation) == (3, 100, "tanh")


def test_online_suites_add_1000_per_round_on_cifar10_resnet18(suites):
    for name in ("fig2_online", "fig7_shrink", "fig8_grid", "active_margin"):
        for t in suites[name].trials:
            cfg = t.config
            assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name) == ("cifar10", "resnet18", "adam")
            assert (cfg.rounds.initial, cfg.rounds.per_round, cfg.rounds.max_rounds) == (1000, 1000, None)


def test_fig2_is_random_vs_warm(suites):
    suite = suites["fig2_online"]
    assert sorted((t.config.init.name, t.config.seed) for t in suite.trials) == sorted(
        itertools.product(["random", "warm"], SEEDS)
    )
    assert {t.config.acquisition.name for t in suite.trials} == {"random"}


def test_fig7_sweeps_shrink_at_perturb_001_with_baselines(suites):
    suite = suites["fig7_shrink"]
    mixed = by_init(suite, "shrink_perturb")
    assert {c.init.perturb for c in mixed} == {0.01}
    shrinks = sorted({c.init.shrink for c in mixed})
    assert shrinks == pytest.approx([i / 10 for i in range(11)])  # 0.0, 0.1, ..., 1.0
    assert sorted((c.init.shrink, c.seed) for c in mixed) == sorted(itertools.product(shrinks, SEEDS))
    for baseline in ("random", "warm"):
        assert {c.seed for c in by_init(suite, baseline)} == SEEDS
    assert len(mixed) + 2 * len(SEEDS) == len(suite.trials)


def test_fig8_covers_the_full_shrink_perturb_cross_product(suites):
    suite = suites["fig8_grid"]
    mixed = by_init(suite, "shrink_perturb")
    shrinks = sorted({c.init.shrink for c in mixed})
    perturbs = sorted({c.init.perturb for c in mixed})
    assert shrinks == pytest.approx([i / 10 for i in range(11)])
    assert perturbs == [0.0001, 0.001, 0.01, 0.1, 1.0]
    points = sorted((c.init.shrink, c.init.perturb, c.seed) for c in mixed)
    assert points == sorted(itertools.product(shrinks, perturbs, SEEDS))  # each exactly once
    for baseline in ("random", "warm"):
        assert {c.seed for c in by_init(suite, baseline)} == SEEDS
    assert len(mixed) + 2 * len(SEEDS) == len(suite.trials)
    assert {c.init.bn_stats for c in mixed} == {"fresh"}  # the authors' semantics


def test_active_margin_compares_three_inits_under_margin_acquisition(suites):
    suite = suites["active_margin"]
    assert {t.config.acquisition.name for t in suite.trials} == {"margin"}
    assert sorted((t.config.init.name, t.config.seed) for t in suite.trials) == sorted(
        itertools.product(["random", "warm", "shrink_perturb"], SEEDS)
    )
    for cfg in by_init(suite, "shrink_perturb"):
        assert (cfg.init.shrink, cfg.init.perturb) == (0.4, 0.1)  # the authors' code defaults


# --- the MNIST-1D suites: quickstart, the (λ, σ) sweep, Figure 7 on a laptop ----------------


@pytest.mark.parametrize("name", sorted(MNIST1D_ROUNDS))
def test_mnist1d_suites_are_the_issues_passive_loop_on_cpu(name, suites):
    """10,000 MNIST-1D samples on the package's 8,000 / 2,000 split; 1,000 first and per
    round; Adam 1e-3, batch 128, 99% training accuracy within 150 epochs; 3 seeds; no GPU."""
    suite = suites[name]
    text = " ".join(header(SUITES_DIR / f"{name}.yaml").split())
    match = re.search(r"Cost: ([\d,]+) trials x (\d+) rounds = ([\d,]+) rounds", text)
    assert match, "the header states its cost as 'Cost: N trials x R rounds = T rounds'"
    trials, rounds, total = (int(g.replace(",", "")) for g in match.groups())
    assert trials == len(suite.trials) == TRIALS[name] and total == trials * rounds
    for trial in suite.trials:
        cfg = trial.config
        assert (cfg.dataset.name, cfg.dataset.size, cfg.dataset.eval) == ("mnist1d", 10_000, "test")
        assert (cfg.rounds.initial, cfg.rounds.per_round) == (1000, 1000)
        assert rounds_of(cfg) == rounds == MNIST1D_ROUNDS[name]
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.batch_size) == (
            "adam",
            0.001,
            0.0,
            128,
        )
        assert (cfg.convergence.train_acc, cfg.convergence.max_epochs) == (0.99, 150)
        assert cfg.scaling.gpus_per_worker == 0 and cfg.pretrain is None
        if cfg.model.name == "mlp":
            assert (cfg.model.activation, cfg.model.width, cfg.model.depth) == ("relu", 100, 2)
    assert {t.config.seed for t in suite.trials} == SEEDS


def test_quickstart_compares_three_inits_passive_and_margin(suites):
    suite = suites["quickstart"]
    cells = sorted((t.config.init.name, t.config.acquisition.name, t.config.seed) for t in suite.trials)
    assert cells == sorted(itertools.product(["random", "warm", "shrink_perturb"], ["random", "margin"], SEEDS))
    swept = {(c.init.shrink, c.init.perturb) for c in by_init(suites["mnist1d_sp_sweep"], "shrink_perturb")}
    chosen = {(c.init.shrink, c.init.perturb) for c in by_init(suite, "shrink_perturb")}
    assert len(chosen) == 1 and chosen <= swept  # λ, σ come from the sweep
    assert {t.config.model.name for t in suite.trials} == {"mlp"}


def test_the_sweep_crosses_shrink_and_perturb_with_baselines(suites):
    suite = suites["mnist1d_sp_sweep"]
    points = sorted((c.init.shrink, c.init.perturb, c.seed) for c in by_init(suite, "shrink_perturb"))
    assert points == sorted(itertools.product([0.3, 0.6, 0.8], [0.001, 0.01, 0.1], SEEDS))
    for baseline in ("random", "warm"):
        assert {c.seed for c in by_init(suite, baseline)} == SEEDS
    assert {t.config.acquisition.name for t in suite.trials} == {"random"}


def test_fig7_mnist1d_is_figure_7s_setting_with_two_models(suites):
    suite = suites["fig7_mnist1d"]
    text = header(SUITES_DIR / "fig7_mnist1d.yaml")
    assert "Figure 7" in text and "What the paper reports" in text and "where they come from" in text
    cells = sorted((t.config.init.name, t.config.model.name, t.config.seed) for t in suite.trials)
    assert cells == sorted(itertools.product(["random", "warm", "shrink_perturb"], ["mlp", "cnn1d"], SEEDS))
    for cfg in by_init(suite, "shrink_perturb"):
        assert (cfg.init.shrink, cfg.init.perturb) == (0.6, 0.01)
    assert {t.config.acquisition.name for t in suite.trials} == {"random"}
    for cfg in (t.config for t in suite.trials if t.config.model.name == "cnn1d"):
        assert (cfg.model.channels, cfg.model.depth) == (25, 3)  # the MNIST-1D paper's ConvBase


# --- cluster.yaml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with open(ROOT / "cluster.yaml") as f:
        return yaml.safe_load(f)


def test_cluster_yaml_has_what_the_launcher_needs(cluster):
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in cluster, key
    assert cluster["provider"]["type"] == "aws" and cluster["provider"]["region"]
    node_types = cluster["available_node_types"]
    assert cluster["head_node_type"] in node_types
    for name, node_type in node_types.items():
        assert {"resources", "node_config"} <= set(node_type), name
        assert node_type["node_config"]["InstanceType"], name
    workers = [n for n in node_types if n != cluster["head_node_type"]]
    assert workers, "at least one worker node type"
    assert all(node_types[n]["node_config"]["InstanceType"].startswith(("g", "p")) for n in workers)  # GPU types
    assert sum(node_types[n].get("min_workers", 0) for n in workers) <= cluster["max_workers"]
    # The project is copied to every node and installed from that copy.
    assert "~/warmstart" in cluster["file_mounts"]
    assert any("pip install" in cmd and "~/warmstart" in cmd for cmd in cluster["setup_commands"])
    assert cluster["metadata"]["results_uri"].startswith("s3://")


def test_cluster_yaml_passes_rays_own_validation(cluster):
    """The launcher's own check: Ray's JSON schema after its AWS defaults are filled in."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # a private API: its absence is no failure of cluster.yaml
        pytest.skip("ray.autoscaler._private.util is not available in this Ray version")
    validate_config(prepare_config(cluster))
