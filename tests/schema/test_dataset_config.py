"""The `dataset` config section: the fixed keys plus the named dataset's parameters
(`dataset.<param>`), validated against its loader's signature; a new name drops the old
dataset's parameters; trial ids are pinned; suites grid over dataset
parameters; `pretrain.dataset` names any registered dataset."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from engine.compute.data import DATASETS, RawDataset, RawSplit, register
from engine.errors import ConfigError
from engine.schema.config import DEFAULTS, build, merge, validate
from engine.schema.registry import Interval
from engine.suite.suite_file import check_pools, load_suite

MNIST1D = DATASETS.get("mnist1d").defaults


def refused(sets: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        build(sets=sets)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- trial ids: pinned, so a change to the identity is a decision, not an accident ---------------

# Computed before dataset parameters existed (commit 9d13d6c), re-pinned when issue 24 removed
# NEUTRAL_IN_IDENTITY (`pretrain: null` and `model.dropout: 0.0` are now part of every identity,
# CHANGELOG.md): datasets without parameters still add no key, so these are the ids of the
# config as it is.
PINNED = [
    ([], "digits-mlp-shrink_perturb-random-s0-44a0754da5"),
    (
        ["dataset.name=cifar10", "model.name=resnet18", "dataset.eval=test", "init.name=warm"],
        "cifar10-resnet18-warm-random-s0-9f6b634934",
    ),
    (["pretrain=digits", "init=warm"], "digits-mlp-warm-random-s0-5dc0a262df"),
    (["dataset.name=svhn", "dataset.holdout=0.5", "seed=2"], "svhn-mlp-shrink_perturb-random-s2-f7abd565a5"),
]


@pytest.mark.parametrize("sets, trial_id", PINNED, ids=[p[1].split("-s")[0] for p in PINNED])
def test_existing_configs_keep_their_trial_ids(sets, trial_id):
    assert build(sets=sets).trial_id() == trial_id


def test_a_shipped_paper_suite_keeps_its_trial_ids():
    trials = load_suite("fig7_shrink").trials
    assert trials[0].trial_id == "cifar10-resnet18-shrink_perturb-random-s0-5cc5666b08"
    assert trials[-1].trial_id == "cifar10-resnet18-warm-random-s2-abbaee81a4"


def test_datasets_without_parameters_keep_exactly_the_fixed_keys():
    for name in ("digits", "cifar10", "cifar100", "svhn"):
        cfg = build(sets=[f"dataset.name={name}"])
        assert list(cfg.dataset.to_dict()) == ["name", "root", "eval", "holdout", "download"]


# --- parameters --------------------------------------------------------------------------


def test_dataset_parameters_get_their_defaults_and_are_part_of_the_identity():
    cfg = build(sets=["dataset=mnist1d"])
    assert cfg.dataset.to_dict() == {**DEFAULTS["dataset"], "name": "mnist1d", **MNIST1D}
    assert cfg.dataset.size == 10_000 and cfg.dataset.padding == (36, 60)
    smaller = build(sets=["dataset=mnist1d", "dataset.size=2000"])
    assert smaller.dataset.size == 2000 and smaller.trial_id() != cfg.trial_id()
    assert smaller.trial_id().startswith("mnist1d-mlp-")
    moved = build(sets=["dataset=mnist1d", "dataset.size=2000", "dataset.root=/elsewhere", "dataset.download=false"])
    assert moved.trial_id() == smaller.trial_id()


def test_a_new_dataset_name_drops_the_old_parameters_and_the_same_name_refines_them():
    cfg = build(sets=["dataset.name=mnist1d", "dataset.size=2000", "dataset.seed=3", "dataset.size=3000"])
    assert (cfg.dataset.size, cfg.dataset.seed) == (3000, 3)
    back = build(sets=["dataset.name=mnist1d", "dataset.size=2000", "dataset.holdout=0.5", "dataset.name=digits"])
    assert back.dataset.to_dict() == {**DEFAULTS["dataset"], "holdout": 0.5}  # fixed keys stay
    again = merge(merge(DEFAULTS, {"dataset": {"name": "mnist1d", "size": 500}}), {"dataset": "mnist1d"})
    assert again["dataset"]["size"] == 500


def test_dataset_parameters_from_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: {name: mnist1d, size: 4000, eval: test, padding: [30, 50], iid_noise_scale: 1e-2}\n")
    cfg = build(str(path))
    assert (cfg.dataset.size, cfg.dataset.eval, cfg.dataset.padding) == (4000, "test", (30, 50))
    assert cfg.dataset.iid_noise_scale == 0.01


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["dataset=mnist1d", "dataset.sise=10"], ["'dataset.sise'", "mnist1d(size=10000, ", "Did you mean 'size'?"]),
        (["dataset.size=10"], ["'dataset.size'", "name, root, eval, holdout, download (digits() has none)"]),
        (["dataset=mnist1d", "dataset.holdot=0.5"], ["'dataset.holdot'", "Did you mean 'holdout'?"]),
        (["dataset=mnist1d", "dataset.size=10"], ["The 'size' parameter of mnist1d must be an int >= 20. Got 10."]),
        (
            ["dataset=mnist1d", "dataset.size=1e4"],
            ["The 'size' parameter of mnist1d must be an int >= 20. Got 10000.0."],
        ),
        (["dataset=files", "dataset.normalize=zscore"], ["The 'normalize' parameter of files must be one of"]),
        (["dataset=mnist"], ["Unknown dataset 'mnist'; known: cifar10, cifar100, digits, files, mnist1d, svhn"]),
        (["dataset=5"], ["The 'dataset' key is a section"]),
        (["dataset.holdout=2"], ["'dataset.holdout'", "(0, 1)"]),
    ],
)
def test_bad_dataset_keys_are_refused_in_one_line(sets, expected):
    message = refused(sets)
    for part in expected:
        assert part in message, (part, message)


def test_pretrain_names_any_registered_dataset():
    assert build(sets=["pretrain=mnist1d", "dataset=mnist1d"]).pretrain.dataset == "mnist1d"
    assert "known: cifar10, cifar100, digits, files, mnist1d, svhn" in refused(["pretrain=mnist"])


@pytest.fixture
def toy_dataset(monkeypatch):
    """A plugin-style dataset with one parameter, registered for one test."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))

    @register("toy", {"n": Interval(4, integer=True)})
    def toy(root, download, n: int = 30):
        """A toy dataset: n two-feature samples, 2 classes."""
        x = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
        return RawDataset(RawSplit(x, np.arange(n) % 2), None, 2)


@pytest.mark.usefixtures("toy_dataset")
def test_a_registered_datasets_parameters_are_config_keys():
    cfg = validate(merge(DEFAULTS, {"dataset": {"name": "toy", "n": 12}}))
    assert cfg.dataset.n == 12
    with pytest.raises(ConfigError, match=r"The 'n' parameter of toy must be an int >= 4. Got 2."):
        validate(merge(DEFAULTS, {"dataset": {"name": "toy", "n": 2}}))


# --- suites --------------------------------------------------------------------------------


def test_suites_grid_over_dataset_parameters_and_whole_datasets(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: sizes
            base:
              dataset: {name: mnist1d, root: ROOT, eval: test}
              rounds: {initial: 10, per_round: 10, max_rounds: 2}
            grid:
              - dataset.size: [200, 300]
                seed: [0]
              - dataset: [{name: mnist1d, root: ROOT, size: 100, eval: test}, {name: digits}]
                seed: [0]
            """
        ).replace("ROOT", str(tmp_path / "data"))
    )
    suite = load_suite(str(path))
    datasets = [(t.config.dataset.name, t.config.dataset.to_dict().get("size")) for t in suite.trials]
    assert datasets == [("mnist1d", 200), ("mnist1d", 300), ("mnist1d", 100), ("digits", None)]
    assert len({t.trial_id for t in suite.trials}) == 4
    check_pools(suite)  # generates each mnist1d size once, under the suite's root
    cached = sorted(p.name.split("-seed")[0] for p in (tmp_path / "data" / "mnist1d").glob("*.npz"))
    assert cached == ["mnist1d-100", "mnist1d-200", "mnist1d-300"]


def test_check_pools_uses_the_dataset_parameters(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(
        f"name: small\nbase:\n  dataset: {{name: mnist1d, root: {tmp_path}, size: 100, eval: test}}\n"
        "  rounds: {initial: 100, per_round: 50}\ngrid:\n  seed: [0]\n"
    )
    with pytest.raises(ConfigError, match="between 1 and the pool size 80"):
        check_pools(load_suite(str(path)))
