"""The transfer experiment (the paper's Figure 9): the `pretrain` config section, the source
model trained before round 1, round 1 initialised from it by the init strategy, the head
replaced when class counts differ, the pool fractions, resume, and the fig9_transfer suite.
Small data: digits, plus two datasets registered by these tests."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from engine.cli import main
from engine.compute import data as data_module
from engine.compute.data import RawDataset, RawSplit, load_digits
from engine.compute.pretrain import pretrain
from engine.errors import ConfigError
from engine.schema.config import DEFAULTS, PRETRAIN_DEFAULTS, build, merge, validate
from engine.schema.records import columns_with
from engine.trial.driver import Driver
from engine.trial.session import start_trial
from engine.trial.setup import fresh_model, load_data
from strategies.init import INIT_STRATEGIES, register

CPU = torch.device("cpu")
POOL = 1198  # digits: 1797 images, 599 held out
SMALL = [
    "device=cpu",
    "model.width=16",
    "rounds.initial=100",
    "rounds.per_round=100",
    "rounds.max_rounds=2",
    "convergence.max_epochs=4",
]
SUITE = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "suites", "fig9_transfer.yaml")


def trial_rows(cfg, out: str | None = None, reporter=None) -> list[dict]:
    """The rows of a trial run in this process on CPU (``start_trial``)."""
    with Driver([start_trial(cfg, out, device=CPU, reporter=reporter)]) as driver:
        return driver.run()


@pytest.fixture(autouse=True)
def test_datasets(monkeypatch):
    """digits5: the digits images with 5 classes (label mod 5); rgb4: 3x4x4 images;
    digits_tt: digits with an official test split (the last 300 images)."""

    def digits5(root, download):
        raw = load_digits(root, download)
        return RawDataset(RawSplit(raw.train.images, raw.train.labels % 5), None, 5)

    def rgb4(root, download):
        rng = np.random.default_rng(0)
        return RawDataset(RawSplit(rng.integers(0, 255, (60, 3, 4, 4), dtype=np.uint8), np.arange(60) % 3), None, 3)

    def digits_tt(root, download):
        raw = load_digits(root, download)
        images, labels = raw.train.images, raw.train.labels
        return RawDataset(RawSplit(images[:1497], labels[:1497]), RawSplit(images[1497:], labels[1497:]), 10)

    monkeypatch.setattr(data_module.DATASETS, "_entries", dict(data_module.DATASETS._entries))
    for name, fn in (("digits5", digits5), ("rgb4", rgb4), ("digits_tt", digits_tt)):
        data_module.register(name)(fn)


@pytest.fixture
def spy(monkeypatch):
    """An init strategy that records (prev, fresh) states and then warm-starts."""
    monkeypatch.setattr(INIT_STRATEGIES, "_entries", dict(INIT_STRATEGIES._entries))
    calls = []

    @register("ws_test_spy")
    def spy_init(prev, fresh):
        calls.append(({k: v.clone() for k, v in prev.state_dict().items()}, fresh.state_dict()))
        return prev

    return calls


def refused(*sets: str) -> str:
    with pytest.raises(ConfigError) as info:
        build(sets=list(sets))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the config section --------------------------------------------------------------------------


def test_pretrain_is_off_by_default_and_fills_its_defaults():
    assert DEFAULTS["pretrain"] is None and build().pretrain is None
    assert build(sets=["pretrain=digits"]).pretrain.to_dict() == {**PRETRAIN_DEFAULTS, "dataset": "digits"}
    cfg = build(sets=["pretrain.dataset=digits5", "pretrain.source_fraction=0.5", "pretrain.lr=0.01"])
    assert cfg.pretrain.dataset == "digits5" and cfg.pretrain.source_fraction == 0.5 and cfg.pretrain.lr == 0.01
    assert cfg.pretrain.fraction == 1.0 and cfg.pretrain.max_epochs == 1000 and cfg.pretrain.patience is None
    assert build(sets=["pretrain=digits", "pretrain=null"]).pretrain is None
    # A later layer refines an earlier one, like any section.
    refined = build(sets=["pretrain={dataset: digits, fraction: 0.5}", "pretrain.batch_size=64"])
    assert (refined.pretrain.fraction, refined.pretrain.batch_size) == (0.5, 64)


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["pretrain.dataset=digits", "pretrain.lrr=0.1"], ["Unknown config key 'pretrain.lrr'", "Did you mean 'lr'?"]),
        (["pretrain.dataset=mnist"], ["Unknown dataset 'mnist' in 'pretrain.dataset'", "digits"]),
        (["pretrain.lr=0.01"], ["The 'pretrain.dataset' key must name the source dataset", "cifar10"]),
        (["pretrain=3"], ["The 'pretrain' key must be null, a dataset name or a mapping"]),
        (
            ["pretrain=digits", "pretrain.fraction=0"],
            ["The 'pretrain.fraction' parameter must be a float in (0, 1]. Got 0."],
        ),
        (["pretrain=digits", "pretrain.source_fraction=1.5"], ["'pretrain.source_fraction'", "(0, 1]", "1.5"]),
        (["pretrain=digits", "pretrain.max_epochs=0"], ["'pretrain.max_epochs' parameter must be an int >= 1"]),
        (["pretrain=digits", "pretrain.patience=0"], ["'pretrain.patience' parameter must be null or an int >= 1"]),
        (["pretrain=digits", "pretrain.lr=-1"], ["'pretrain.lr' parameter must be a float > 0"]),
    ],
)
def test_bad_pretrain_values_are_refused_in_one_line(sets, expected):
    message = refused(*sets)
    for part in expected:
        assert part in message, message


def test_pretrain_and_dropout_are_part_of_the_identity_like_every_key():
    """No key is left out of the identity for holding a "neutral" value (issue 24): a config
    without `pretrain` or `model.dropout` is validated to their defaults, and so to the
    same trial; any other value is another trial."""
    cfg = build(sets=["seed=5"])
    old = cfg.to_dict()
    del old["pretrain"], old["model"]["dropout"]
    assert "pretrain" in cfg.identity() and cfg.identity()["model"]["dropout"] == 0.0
    assert validate(old).trial_id() == cfg.trial_id()
    assert build(sets=["seed=5", "pretrain=digits"]).trial_id() != cfg.trial_id()
    assert build(sets=["seed=5", "model.dropout=0.1"]).trial_id() != cfg.trial_id()


def test_a_source_of_another_input_shape_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--set", "device=cpu", "--set", "pretrain=rgb4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'pretrain.dataset' 'rgb4' has 3x4x4 inputs" in err and "'digits' has 1x8x8" in err
    assert not out.exists()


# --- the source model and round 1 ------------------------------------------------------------------


def test_round_1_starts_from_the_pretrained_model_with_a_fresh_head_when_classes_differ(spy):
    cfg = build(sets=[*SMALL, "pretrain={dataset: digits5, max_epochs: 3}", "init=ws_test_spy"])
    data = load_data(cfg, CPU)
    rows = trial_rows(cfg)
    assert len(spy) == 2  # the init strategy ran in round 1 too
    prev_round1, fresh_round1 = spy[0]
    source = pretrain(cfg, CPU).model  # the same, seeded
    assert source.head.out_features == 5
    fresh = fresh_model(cfg, data, 1, CPU)
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(prev_round1[key], value), key  # the pretrained features
    for key in ("head.weight", "head.bias"):
        assert torch.equal(prev_round1[key], fresh.state_dict()[key])  # round 1's fresh 10-class head
        assert torch.equal(fresh_round1[key], fresh.state_dict()[key])
    assert rows[0]["cfg.pretrain.dataset"] == "digits5"
    assert rows[0]["pretrain_classes"] == 5 and rows[0]["pretrain_samples"] == POOL
    assert 1 <= rows[0]["pretrain_epochs"] <= 3 and rows[0]["pretrain_steps"] >= 10
    assert rows[0]["pretrain_stop_reason"] in ("threshold", "max_epochs")


@pytest.mark.slow
def test_the_head_is_kept_when_the_class_counts_agree(spy):
    cfg = build(sets=[*SMALL, "pretrain={dataset: digits, max_epochs: 2}", "init=ws_test_spy"])
    trial_rows(cfg)
    source = pretrain(cfg, CPU).model
    for key, value in source.state_dict().items():
        assert torch.equal(spy[0][0][key], value), key


def test_random_init_ignores_the_pretrained_model():
    columns = ["round", "n_labeled", "epochs", "steps", "train_acc", "test_acc", "test_loss", "acquired"]
    plain = trial_rows(build(sets=[*SMALL, "init=random"]))
    cfg = build(sets=[*SMALL, "init=random", "pretrain={dataset: digits5, max_epochs: 2}"])
    transferred = trial_rows(cfg)
    assert [[r[c] for c in columns] for r in transferred] == [[r[c] for c in columns] for r in plain]
    assert plain[0]["cfg.pretrain.dataset"] is None and plain[0]["pretrain_epochs"] is None


def test_warm_start_from_the_pretrained_model_changes_round_1():
    plain = trial_rows(build(sets=[*SMALL, "init=warm"]))
    cfg = build(sets=[*SMALL, "init=warm", "pretrain={dataset: digits, max_epochs: 3}"])
    transferred = trial_rows(cfg)
    assert transferred[0]["acquired"] == plain[0]["acquired"]  # the same initial random set
    assert transferred[0]["test_acc"] != plain[0]["test_acc"]


@pytest.mark.slow
def test_pretraining_is_deterministic():
    sets = [
        *SMALL,
        "init={name: shrink_perturb, shrink: 0.3, perturb: 0.0001}",
        "pretrain={dataset: digits5, max_epochs: 2}",
    ]
    cfg = build(sets=sets)
    a = trial_rows(cfg)
    b = trial_rows(cfg)
    timing = set(columns_with("timing"))
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == [
        {k: v for k, v in r.items() if k not in timing} for r in b
    ]
    assert math.isclose(a[0]["shrink"], 0.3) and math.isclose(a[0]["perturb"], 1e-4)


# --- fractions -------------------------------------------------------------------------------------


def test_the_trial_runs_on_a_fraction_of_the_target_pool():
    cfg = build(sets=[*SMALL, "pretrain={dataset: digits5, fraction: 0.5, max_epochs: 1}"])
    data, full = load_data(cfg, CPU), load_data(build(sets=SMALL), CPU)
    assert data.pool_y.shape[0] == 599 and data.pool_x.shape[0] == 599
    assert set(data.pool_index.tolist()) < set(full.pool_index.tolist())
    assert torch.equal(data.eval_y, full.eval_y)  # the evaluation split is kept whole
    position = {int(i): p for p, i in enumerate(full.pool_index)}
    rows_of = [position[int(i)] for i in data.pool_index]
    assert torch.equal(data.pool_x, full.pool_x[rows_of]) and torch.equal(data.pool_y, full.pool_y[rows_of])
    rows = trial_rows(cfg)
    assert rows[0]["n_pool"] == 599
    assert {i for r in rows for i in r["acquired"]} <= set(data.pool_index.tolist())


def test_the_source_is_a_fraction_of_its_pool_and_never_the_held_out_samples():
    cfg = build(sets=[*SMALL, "pretrain={dataset: digits, source_fraction: 0.25, max_epochs: 1}"])
    source = pretrain(cfg, CPU)
    full = load_data(build(sets=SMALL), CPU)
    assert source.source_index.shape[0] == 300  # 0.25 of the 1198-sample pool
    assert set(source.source_index.tolist()) <= set(full.pool_index.tolist())  # no evaluation sample
    assert source.record.samples == 300
    # Split as the target is: another holdout fraction, another source pool.
    half = pretrain(build(sets=[*SMALL, "pretrain={dataset: digits5, max_epochs: 1}", "dataset.holdout=0.5"]), CPU)
    assert half.source_index.shape[0] == 899  # 1797 - round(898.5)
    # With dataset.eval: test nothing is held out of the training split: the source is all of it,
    # even for a source without a test split of its own.
    cfg = build(
        sets=[*SMALL, "dataset.name=digits_tt", "dataset.eval=test", "pretrain={dataset: digits, max_epochs: 1}"]
    )
    assert pretrain(cfg, CPU).source_index.tolist() == list(range(1797))


# --- resume ----------------------------------------------------------------------------------------


class StopAfterRound1:
    def round_started(self, round_, rounds, n_labeled): ...

    def epoch(self, round_, epoch, train_acc, train_loss): ...

    def round_done(self, row):
        raise KeyboardInterrupt


def test_resume_after_round_1_does_not_pretrain_again_and_keeps_the_pretrain_columns(tmp_path, monkeypatch):
    cfg = build(sets=[*SMALL, "init=warm", "pretrain={dataset: digits5, max_epochs: 2}"])
    reference = trial_rows(cfg)
    with pytest.raises(KeyboardInterrupt):
        trial_rows(cfg, str(tmp_path), reporter=StopAfterRound1())

    import engine.trial.session

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained again on resume")

    monkeypatch.setattr(engine.trial.session, "pretrain", no_pretraining)
    resumed = trial_rows(cfg, str(tmp_path))
    assert [r["round"] for r in resumed] == [2]
    for key in ("acquired", "test_acc", "epochs", "pretrain_epochs", "pretrain_steps", "pretrain_samples"):
        assert resumed[0][key] == reference[1][key], key

    # The pretrain columns reach the Parquet table, the same in every row.
    table = pd.read_parquet(tmp_path)
    assert table["round"].tolist() == [1, 2]
    assert table["cfg.pretrain.dataset"].tolist() == ["digits5", "digits5"]
    for key in ("pretrain_epochs", "pretrain_steps", "pretrain_samples", "pretrain_classes", "pretrain_stop_reason"):
        assert table[key].tolist() == [reference[0][key]] * 2, key
    assert table["cfg.pretrain.max_epochs"].tolist() == [2, 2]


# --- the suite -----------------------------------------------------------------------------------------


def grid_points(grid) -> list[tuple[str, object]]:
    return [
        (key, value)
        for one in (grid if isinstance(grid, list) else [grid])
        for key, values in one.items()
        for value in values
    ]


def nested(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def test_fig9_suite_validates_with_every_grid_value():
    with open(SUITE) as f:
        text = f.read()
    suite = yaml.safe_load(text)
    assert suite["name"] == "fig9_transfer" and set(suite) == {"name", "base", "grid"}
    assert "Figure 9" in text
    base = merge(DEFAULTS, suite["base"])
    cfg = validate(base)
    assert (cfg.dataset.name, cfg.model.name, cfg.pretrain.dataset) == ("cifar10", "resnet18", "cifar10")
    seen_inits = []
    for key, value in grid_points(suite["grid"]):
        point = validate(merge(base, nested(key, copy.deepcopy(value))))
        if key == "init":
            seen_inits.append((point.init.name, point.init.params().get("shrink"), point.init.params().get("perturb")))
    assert ("shrink_perturb", 0.3, 1e-4) in seen_inits  # the figure's λ and σ
    assert {name for name, _, _ in seen_inits} == {"random", "warm", "shrink_perturb"}
