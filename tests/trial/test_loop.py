"""The round loop (engine/trial/loop.py) and its results, through ``start_trial`` and the CLI:
the Parquet columns and rows, determinism, init-strategy equivalences, fractions,
acquisition, interruption and resume, BatchNorm re-estimation.  Small data: digits."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

import engine.storage.store
from engine.cli import main
from engine.schema.config import build
from engine.schema.records import columns_with
from engine.storage.store import TrialStore
from engine.trial.driver import Driver
from engine.trial.progress import ConsoleReporter
from engine.trial.session import start_trial
from engine.trial.setup import fresh_model, load_data, plan_rounds

CPU = torch.device("cpu")
POOL = 1198  # digits: 1797 images, 599 held out (holdout 0.3333)

CONTRACT = [
    "suite",
    "trial_id",
    "seed",
    "cfg.dataset.name",
    "cfg.model.name",
    "cfg.optimizer.name",
    "cfg.optimizer.lr",
    "cfg.batch_size",
    "cfg.optimizer.weight_decay",
    "cfg.init.name",
    "shrink",
    "perturb",
    "cfg.acquisition.name",
    "per_round",
    "round",
    "n_labeled",
    "epochs",
    "steps",
    "stop_reason",
    "train_acc",
    "train_loss",
    "test_acc",
    "test_loss",
    "train_seconds",
    "acquire_seconds",
    "world_size",
    "device",
    "acquired",
]
TIMINGS = set(columns_with("timing"))  # times, and the rounds' UTC start and end
METRICS = ["round", "n_labeled", "epochs", "steps", "stop_reason", "train_acc", "train_loss", "test_acc", "test_loss"]

SMALL = ["device=cpu", "rounds.max_rounds=3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- helpers ---------------------------------------------------------------------------------


def plain(value):
    """A row value as a plain Python value, the same whether it came from start_trial or Parquet."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return [int(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def normal(rows, columns=None) -> list[dict]:
    """Rows sorted by round, as plain dicts of ``columns`` (default: all but the timings)."""
    out = []
    for row in sorted(rows, key=lambda r: r["round"]):
        keys = columns or [k for k in row if k not in TIMINGS]
        out.append({k: plain(row[k]) for k in keys})
    return out


def read_rows(out) -> list[dict]:
    return pd.read_parquet(out).to_dict("records")


def run(sets, out=None, reporter=None) -> list[dict]:
    """A trial in-process on CPU (``start_trial``); with ``out``, rows and checkpoints go to a TrialStore there."""
    cfg = build(sets=["device=cpu", *sets])
    with Driver([start_trial(cfg, str(out) if out is not None else None, device=CPU, reporter=reporter)]) as driver:
        return driver.run()


_cache: dict[tuple, list[dict]] = {}


def cached(*sets: str) -> list[dict]:
    """Rows of a storeless run, computed once per test session (tests must not modify them)."""
    if sets not in _cache:
        _cache[sets] = run(list(sets))
    return _cache[sets]


def cli(capsys, out, *sets: str, quiet: bool = False) -> tuple[int, str, str]:
    argv = ["run", "--out", str(out)] + (["--quiet"] if quiet else [])
    for s in ["device=cpu", *sets]:
        argv += ["--set", s]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class InterruptAfter:
    """A reporter that stops the trial (as Ctrl-C would) once round ``after`` is done."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.done: list[int] = []

    def round_started(self, round_, rounds, n_labeled): ...

    def epoch(self, round_, epoch, train_acc, train_loss): ...

    def round_done(self, row):
        self.done.append(row["round"])
        if row["round"] == self.after:
            raise KeyboardInterrupt


# --- the table -----------------------------------------------------------------------------------

BASE_SETS = ["rounds.initial=500", "rounds.per_round=400"]  # 500, 900, 1198: the pool runs out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A CLI run to pool exhaustion; returns (config, table, stdout)."""
    out = tmp_path_factory.mktemp("base") / "out"
    code = main(["run", "--quiet", "--out", str(out)] + sum((["--set", s] for s in ["device=cpu", *BASE_SETS]), []))
    assert code == 0
    cfg = build(sets=["device=cpu", *BASE_SETS])
    return cfg, pd.read_parquet(out).sort_values("round").reset_index(drop=True)


def test_table_has_the_contracted_columns(base):
    _, table = base
    missing = [c for c in CONTRACT if c not in table.columns]
    assert missing == []
    assert "precise_bn" in table.columns


def test_one_row_per_round_until_the_pool_is_exhausted(base):
    _, table = base
    assert list(table["round"]) == [1, 2, 3]
    assert list(table["n_labeled"]) == [500, 900, 1198]  # the last round is smaller: the pool ran out
    assert list(table["per_round"]) == [400, 400, 400]
    assert [len(a) for a in table["acquired"]] == [500, 400, 298]


def test_acquired_lists_are_disjoint_and_add_up(base):
    cfg, table = base
    data = load_data(cfg, CPU)
    pool = set(int(i) for i in data.pool_index)
    seen: set[int] = set()
    for _, row in table.iterrows():
        acquired = [int(i) for i in row["acquired"]]
        assert acquired == sorted(acquired)
        assert len(set(acquired)) == len(acquired)
        assert seen.isdisjoint(acquired)
        seen |= set(acquired)
        assert len(seen) == row["n_labeled"]
        assert set(acquired) <= pool  # dataset indices of the pool, never of the held-out split
    assert seen == pool  # the pool is exhausted


def test_acquired_classes_count_the_labels_of_the_picks(base):
    cfg, table = base
    data = load_data(cfg, CPU)
    label = dict(zip(data.pool_index.tolist(), data.pool_y.cpu().tolist(), strict=True))
    for _, row in table.iterrows():
        expected = np.bincount([label[int(i)] for i in row["acquired"]], minlength=data.num_classes)
        assert list(row["acquired_classes"]) == expected.tolist() and len(expected) == 10


def test_row_values(base):
    cfg, table = base
    assert table["trial_id"].tolist() == [cfg.trial_id()] * 3
    assert table["suite"].isna().all()
    expected = {
        "seed": 0,
        "cfg.dataset.name": "digits",
        "cfg.model.name": "mlp",
        "cfg.optimizer.name": "adam",
        "cfg.optimizer.lr": 0.001,
        "cfg.batch_size": 128,
        "cfg.optimizer.weight_decay": 0.0,
        "cfg.init.name": "shrink_perturb",
        "shrink": 0.4,
        "perturb": 0.1,
        "cfg.acquisition.name": "random",
        "world_size": 1,
        "device": "cpu",
        "precise_bn": False,  # the MLP has no BatchNorm: nothing re-estimated
    }
    for column, value in expected.items():
        assert table[column].tolist() == [value] * 3, column
    for _, row in table.iterrows():
        assert row["stop_reason"] in ("threshold", "plateau", "max_epochs")
        if row["stop_reason"] == "threshold":
            assert row["train_acc"] >= 0.99
        assert 1 <= row["epochs"] <= 1000
        assert row["steps"] == row["epochs"] * math.ceil(row["n_labeled"] / 128)
        assert 0.5 < row["test_acc"] <= 1.0  # an MLP on digits does far better than chance
        assert row["test_loss"] > 0 and row["train_loss"] > 0
        assert row["train_seconds"] > 0 and row["acquire_seconds"] >= 0


@pytest.mark.parametrize(
    "init, shrink, perturb",
    [("init=random", 0.0, 1.0), ("init=warm", 1.0, 0.0), ("init={name: shrink_perturb, shrink: 0.6}", 0.6, 0.1)],
)
def test_effective_shrink_and_perturb(init, shrink, perturb):
    rows = cached(*SMALL, "acquisition.name=margin", init)
    assert [(r["shrink"], r["perturb"]) for r in rows] == [(shrink, perturb)] * 3


# --- rounds ----------------------------------------------------------------------------------------


def test_max_rounds_caps_the_rounds():
    rows = cached(*SMALL)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["n_labeled"] for r in rows] == [100, 200, 300]
    cfg = build(sets=["device=cpu"])
    assert plan_rounds(cfg, POOL).rounds == 12  # uncapped: 100, 200, ..., 1100, 1198


def test_fractions_give_the_two_phase_experiment():
    rows = run(["rounds.initial=0.5", "rounds.per_round=0.5"])
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["n_labeled"] for r in rows] == [599, 1198]
    assert [len(r["acquired"]) for r in rows] == [599, 599]
    assert [r["per_round"] for r in rows] == [599, 599]
    assert set(rows[0]["acquired"]).isdisjoint(rows[1]["acquired"])


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("acquisition", ["random", "margin"])
def test_same_config_and_seed_give_identical_rows(acquisition):
    sets = [*SMALL, f"acquisition.name={acquisition}"]
    first, second = run(sets), run(sets)
    assert normal(first) == normal(second)
    assert [r["acquired"] for r in first] == [r["acquired"] for r in second]


def test_another_seed_gives_other_rows():
    a = cached(*SMALL, "acquisition.name=margin")
    b = cached(*SMALL, "acquisition.name=margin", "seed=1")
    assert a[0]["acquired"] != b[0]["acquired"]
    assert normal(a, METRICS) != normal(b, METRICS)


def test_margin_acquisition_differs_from_random():
    random_rows = cached(*SMALL, "acquisition.name=random")
    margin_rows = cached(*SMALL, "acquisition.name=margin")
    assert random_rows[0]["acquired"] == margin_rows[0]["acquired"]  # round 1: the same initial random set
    assert random_rows[1]["acquired"] != margin_rows[1]["acquired"]
    assert len(margin_rows[1]["acquired"]) == 100


def test_margin_picks_the_smallest_margins_of_the_previous_model(tmp_path):
    """Round 2's acquired set is the 100 unlabeled samples with the smallest top-2 probability
    gap under round 1's trained model (the checkpoint of a one-round run)."""
    sets = ["acquisition.name=margin"]
    run([*sets, "rounds.max_rounds=1"], out=tmp_path)
    cfg = build(sets=["device=cpu", *sets, "rounds.max_rounds=1"])
    checkpoint = TrialStore(str(tmp_path), cfg.trial_id()).load_checkpoint()
    assert checkpoint["round"] == 1
    data = load_data(cfg, CPU)
    model = fresh_model(cfg, data, 1, CPU)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    unlabeled = np.flatnonzero(checkpoint["labeled"] == 0)
    with torch.no_grad():
        probs = torch.softmax(model(data.pool_x[torch.from_numpy(unlabeled)]), dim=1)
    top2 = probs.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1]).numpy()
    order = np.argsort(gap, kind="stable")
    expected = sorted(int(i) for i in data.pool_index[unlabeled[order[:100]]])

    rows = cached(*SMALL, "acquisition.name=margin")
    assert rows[0]["acquired"] == sorted(int(i) for i in data.pool_index[checkpoint["labeled"] == 1])
    picked = set(rows[1]["acquired"])
    assert len(picked) == 100
    # Allow for float ties at the boundary: everything strictly inside the 100 smallest is picked.
    threshold = gap[order[99]]
    assert all(int(data.pool_index[unlabeled[p]]) in picked for p in np.flatnonzero(gap < threshold - 1e-6))
    assert len(picked & set(expected)) >= 98


# --- init equivalences (no BatchNorm) ------------------------------------------------------------


def test_random_equals_shrink_perturb_zero_one():
    a = cached(*SMALL, "acquisition.name=margin", "init=random")
    b = cached(*SMALL, "acquisition.name=margin", "init={name: shrink_perturb, shrink: 0, perturb: 1}")
    assert normal(a, [*METRICS, "acquired", "shrink", "perturb"]) == normal(
        b, [*METRICS, "acquired", "shrink", "perturb"]
    )


def test_warm_equals_shrink_perturb_one_zero():
    a = cached(*SMALL, "acquisition.name=margin", "init=warm")
    b = cached(*SMALL, "acquisition.name=margin", "init={name: shrink_perturb, shrink: 1, perturb: 0}")
    assert normal(a, [*METRICS, "acquired", "shrink", "perturb"]) == normal(
        b, [*METRICS, "acquired", "shrink", "perturb"]
    )


def test_warm_and_random_differ_after_round_one():
    """The equivalences above are not vacuous: the strategies do change what is trained."""
    random_rows = cached(*SMALL, "acquisition.name=margin", "init=random")
    warm_rows = cached(*SMALL, "acquisition.name=margin", "init=warm")
    assert normal(random_rows[:1], METRICS) == normal(warm_rows[:1], METRICS)  # round 1 is always fresh
    assert normal(random_rows[1:], METRICS) != normal(warm_rows[1:], METRICS)
    # warm start continues from a model that already fits most of the data
    assert sum(r["epochs"] for r in warm_rows[1:]) < sum(r["epochs"] for r in random_rows[1:])


# --- interruption and resume ------------------------------------------------------------------

RESUME_SETS = ["acquisition.name=margin", "rounds.max_rounds=4"]  # model-dependent acquisition and init


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted trial's rows, as read back from its Parquet files."""
    out = tmp_path_factory.mktemp("reference")
    run(RESUME_SETS, out=out)
    rows = normal(read_rows(out))
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    return rows


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, reference):
    reporter = InterruptAfter(2)
    with pytest.raises(KeyboardInterrupt):
        run(RESUME_SETS, out=tmp_path, reporter=reporter)
    assert reporter.done == [1, 2]
    assert normal(read_rows(tmp_path)) == reference[:2]

    resumed = run(RESUME_SETS, out=tmp_path)
    assert [r["round"] for r in resumed] == [3, 4]  # only the missing rounds ran
    table = read_rows(tmp_path)
    assert sorted(r["round"] for r in table) == [1, 2, 3, 4]  # every round exactly once
    assert normal(table) == reference


def test_crash_between_row_and_checkpoint_neither_loses_nor_duplicates(tmp_path, reference, monkeypatch):
    real, write_row = TrialStore.save_checkpoint, TrialStore.write_row

    def crash_at_round_two(self, state):
        if state["round"] == 2:
            raise KeyboardInterrupt
        real(self, state)

    monkeypatch.setattr(TrialStore, "save_checkpoint", crash_at_round_two)
    with pytest.raises(KeyboardInterrupt):
        run(RESUME_SETS, out=tmp_path)
    assert sorted(r["round"] for r in read_rows(tmp_path)) == [1, 2]  # round 2's row is kept
    (row_2,) = tmp_path.glob("*-round0002.parquet")
    written = row_2.read_bytes()

    monkeypatch.setattr(TrialStore, "save_checkpoint", real)
    writes = []
    monkeypatch.setattr(TrialStore, "write_row", lambda self, row: writes.append(row["round"]) or write_row(self, row))
    resumed = run(RESUME_SETS, out=tmp_path)
    assert [r["round"] for r in resumed] == [2, 3, 4]  # round 2 again: its checkpoint was lost
    # ... checked against its saved row, which is kept: the object is written once (guarantees.md).
    assert writes == [3, 4] and row_2.read_bytes() == written
    table = read_rows(tmp_path)
    assert sorted(r["round"] for r in table) == [1, 2, 3, 4]
    assert normal(table) == reference


def test_interrupted_write_leaves_no_partial_row_visible(tmp_path, reference, monkeypatch):
    """Kill the run while round 3's row is half written: readers see rounds 1-2 only."""
    real_replace = os.replace
    cut: list[str] = []

    def half_written(src, dst, *args, **kwargs):
        if str(dst).endswith("round0003.parquet"):
            size = os.path.getsize(src)
            with open(src, "r+b") as f:
                f.truncate(size // 2)
            cut.append(str(src))
            raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(engine.storage.store.os, "replace", half_written)
    with pytest.raises(KeyboardInterrupt):
        run(RESUME_SETS, out=tmp_path)
    monkeypatch.setattr(engine.storage.store.os, "replace", real_replace)

    assert cut, "round 3's row was not written through a temporary file"
    assert not os.path.exists(cut[0]), "the interrupted write left its temporary file behind"
    table = pd.read_parquet(tmp_path)  # must not trip over the half-written file
    assert sorted(table["round"]) == [1, 2]
    for name in os.listdir(tmp_path):
        if name.endswith(".parquet"):
            assert len(pd.read_parquet(tmp_path / name)) == 1  # every visible file is a complete row

    run(RESUME_SETS, out=tmp_path)
    assert normal(read_rows(tmp_path)) == reference


def test_cli_interrupt_then_resume(capsys, tmp_path, reference, monkeypatch):
    real = ConsoleReporter.round_done

    def interrupt_after_two(self, row):
        real(self, row)
        if row["round"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ConsoleReporter, "round_done", interrupt_after_two)
    code, _, err = cli(capsys, tmp_path, *RESUME_SETS)
    assert code == 130
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(r["round"] for r in read_rows(tmp_path)) == [1, 2]

    monkeypatch.setattr(ConsoleReporter, "round_done", real)
    code, stdout, err = cli(capsys, tmp_path, *RESUME_SETS)
    assert code == 0, err
    assert "resuming after round 2" in stdout
    table = read_rows(tmp_path)
    assert sorted(r["round"] for r in table) == [1, 2, 3, 4]
    assert normal(table) == reference


def test_rerunning_a_finished_trial_adds_nothing(capsys, tmp_path):
    code, _, err = cli(capsys, tmp_path, *SMALL, quiet=True)
    assert code == 0, err
    files = {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path) if name.endswith(".parquet")}
    assert len(files) == 3
    before = normal(read_rows(tmp_path))

    code, stdout, err = cli(capsys, tmp_path, *SMALL, quiet=True)
    assert code == 0, err
    assert "already complete" in stdout
    after = {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path) if name.endswith(".parquet")}
    assert after == files  # no row rewritten, none added
    assert normal(read_rows(tmp_path)) == before


def test_two_trials_share_one_out(capsys, tmp_path):
    assert cli(capsys, tmp_path, *SMALL, "seed=0", quiet=True)[0] == 0
    assert cli(capsys, tmp_path, *SMALL, "seed=1", quiet=True)[0] == 0
    table = pd.read_parquet(tmp_path)
    assert len(table) == 6
    assert table.groupby("trial_id")["round"].apply(sorted).tolist() == [[1, 2, 3], [1, 2, 3]]
    assert sorted(table["seed"].unique()) == [0, 1]


# --- BatchNorm: re-estimating statistics before evaluation ---------------------------------------

BN_SETS = [
    "model={name: resnet18, width: 4}",
    "rounds.initial=100",
    "rounds.per_round=100",
    "rounds.max_rounds=3",
    "convergence.max_epochs=3",
]


@pytest.fixture(scope="module")
def bn_tables(tmp_path_factory):
    tables = {}
    for precise in (True, False):
        out = tmp_path_factory.mktemp(f"bn_{precise}")
        argv = ["run", "--quiet", "--out", str(out)]
        for s in ["device=cpu", *BN_SETS, f"eval.precise_bn={str(precise).lower()}"]:
            argv += ["--set", s]
        assert main(argv) == 0
        tables[precise] = normal(read_rows(out))
    return tables


@pytest.mark.parametrize("precise", [True, False])
def test_precise_bn_column_records_the_setting(bn_tables, precise):
    rows = bn_tables[precise]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["precise_bn"] for r in rows] == [precise] * 3
    assert {r["cfg.model.name"] for r in rows} == {"resnet18"}


def test_precise_bn_changes_evaluation_only(bn_tables):
    train_columns = ["round", "n_labeled", "epochs", "steps", "stop_reason", "train_acc", "train_loss", "acquired"]
    assert normal(bn_tables[True], train_columns) == normal(bn_tables[False], train_columns)
    # the running statistics differ, so the eval-mode loss does in every round
    for a, b in zip(bn_tables[True], bn_tables[False], strict=True):
        assert a["test_loss"] != b["test_loss"]


def test_mlp_records_no_precise_bn():
    rows = cached(*SMALL)
    assert [r["precise_bn"] for r in rows] == [False] * 3
