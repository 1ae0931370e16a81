"""The Python API (``import warmstart``), one trial runner, and the row schema: every row
carries the whole config as typed ``cfg.*`` columns."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import warmstart as ws
from engine.schema import plugins
from engine.schema.config import DEFAULTS, build
from engine.schema.records import CONFIG_PREFIX, RECORD_COLUMNS, SHORT_NAMES, arrow_schema, config_columns
from strategies.acquisition import ACQUISITION_STRATEGIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "device": "cpu",
    "rounds": {"initial": 60, "per_round": 60, "max_rounds": 3},
    "convergence": {"max_epochs": 8},
}


def test_run_trial_in_memory_returns_typed_rows_with_the_whole_config():
    df = ws.run_trial({**FAST, "init": {"name": "shrink_perturb", "shrink": 0.6, "perturb": 0.01}})
    assert list(df["round"]) == [1, 2, 3]
    assert list(df["n_labeled"]) == [60, 120, 180]
    # The config, typed: counts and fractions as floats, ints as ints, nulls where a key does not apply.
    assert df["cfg.rounds.initial"].tolist() == [60.0] * 3
    assert df["cfg.rounds.max_rounds"].tolist() == [3] * 3
    assert df["cfg.convergence.max_epochs"].dtype == np.int64
    assert df["cfg.init.shrink"].tolist() == [0.6] * 3 and df["cfg.init.perturb"].tolist() == [0.01] * 3
    assert df["cfg.init.blocks"].isna().all()  # warm_partial's parameter: not this strategy's
    assert df["cfg.dataset.holdout"].tolist() == [0.3333] * 3
    assert df["cfg.trial_id"].tolist() == df["trial_id"].tolist()
    assert list(df.columns) == arrow_schema().names + list(SHORT_NAMES)  # as ws.load gives them
    assert df["init"].tolist() == ["shrink_perturb"] * 3


def test_config_columns_cover_every_key_and_cast_to_the_column_type():
    cfg = build({"init": "warm", "rounds": {"initial": 0.5, "per_round": 10}, "model": {"name": "mlp", "width": 32}})
    columns = config_columns(cfg.to_dict())
    assert columns["init.name"] == "warm" and columns["init.shrink"] is None
    assert columns["rounds.initial"] == 0.5 and columns["rounds.per_round"] == 10.0
    assert columns["model.width"] == 32 and columns["model.activation"] == "tanh"
    # 'auto' or a bool: the bool column, null for 'auto' (docs/results.md).
    assert columns["performance.autocast"] is None and columns["performance.compile"] is False
    names = {f.name for f in arrow_schema()}
    assert {CONFIG_PREFIX + key for key in columns} <= names
    # Every fixed key of the defaults has its column.
    for section, keys in DEFAULTS.items():
        if isinstance(keys, dict) and section not in ("model", "init", "acquisition"):
            for key in keys:
                assert f"cfg.{section}.{key}" in names, (section, key)


def test_run_trial_with_out_writes_what_it_returns_and_continues_when_max_rounds_grows(tmp_path):
    out = str(tmp_path / "out")
    short = ws.run_trial({**FAST, "rounds": {**FAST["rounds"], "max_rounds": 2}}, out)
    assert list(short["round"]) == [1, 2]
    longer = ws.run_trial(FAST, out)
    # The same trial continued: one trial id, round 1 and 2 rows unchanged, round 3 added.
    assert longer["trial_id"].nunique() == 1 and longer["trial_id"][0] == short["trial_id"][0]
    assert list(longer["round"]) == [1, 2, 3]
    assert longer["test_acc"][:2].tolist() == short["test_acc"].tolist()
    on_disk = pd.read_parquet(out).sort_values("round")
    assert on_disk["test_acc"].tolist() == longer["test_acc"].tolist()
    assert on_disk["cfg.rounds.max_rounds"].tolist() == [2, 2, 3]  # each row records the config that made it
    # The same rounds as one uninterrupted in-memory run: stopping and growing changed nothing.
    fresh = ws.run_trial(FAST)
    assert fresh["test_acc"].tolist() == longer["test_acc"].tolist()


def test_invalid_config_raises_config_error_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ws.ConfigError, match="Unknown config key 'rounds.per_rund'"):
        ws.run_trial({"rounds": {"per_rund": 3}}, str(out))
    with pytest.raises(ws.ConfigError, match="Unknown init strategy 'hot'; known: .*shrink_perturb"):
        ws.Trial({"init": "hot"}, str(out))
    with pytest.raises(ws.ConfigError, match="a mapping, a YAML file's path or a Config"):
        ws.run_trial(42)
    with pytest.raises(ws.ConfigError, match="Cannot read config file"):
        ws.run_trial(str(tmp_path / "missing.yaml"))
    assert not out.exists()


def test_trial_iterates_rounds_with_picks_outputs_and_models_and_matches_run_trial():
    config = {**FAST, "init": "warm", "acquisition": "margin"}
    trial = ws.Trial(config)
    assert trial.round == 0 and trial.rounds == 3 and trial.model() is None
    first = next(trial)
    assert first.round == 1 and first.outputs is None and len(first.picked) == 60
    model_1 = first.model()
    assert next(model_1.parameters()).device == torch.device("cpu")
    second = next(trial)
    # Margin scored the 60·1 labeled samples' complement of the pool, and picked 60 of it.
    n_pool = second.row["n_pool"]
    assert second.outputs.probs.shape == (n_pool - 60, 10)
    assert torch.allclose(second.outputs.probs.sum(1), torch.ones(n_pool - 60), atol=1e-5)
    assert second.picked.tolist() == second.row["acquired"] and len(second.picked) == 60
    assert not set(second.picked) & set(first.picked)
    with pytest.raises(RuntimeError, match="round 1's model is gone"):
        first.model()
    # The copy is a snapshot: training round 2 (warm: the same object, trained further) left it alone.
    live = trial.model()
    assert any(not torch.equal(a, b) for a, b in zip(model_1.parameters(), live.parameters(), strict=True))
    rest = list(trial)
    assert [r.round for r in rest] == [3] and trial.done
    assert list(trial.labeled) == sorted(first.picked.tolist() + second.picked.tolist() + rest[0].picked.tolist())
    expected = ws.run_trial(config)
    assert trial.frame()["test_acc"].tolist() == expected["test_acc"].tolist()


def test_a_trial_stopped_and_opened_again_resumes_after_its_last_round(tmp_path):
    out = str(tmp_path / "out")
    config = {**FAST, "init": "random"}
    first = ws.Trial(config, out)
    next(first)
    del first
    again = ws.Trial(config, out)
    assert again.round == 1
    rows = again.run()
    assert list(rows["round"]) == [1, 2, 3]
    assert rows["test_acc"].tolist() == ws.run_trial(config)["test_acc"].tolist()


def test_trial_refuses_workers():
    with pytest.raises(ws.ConfigError, match="use run_trial\\(config, workers=N\\)"):
        ws.Trial({**FAST, "scaling": {"workers": 2}})


def test_list_functions_return_what_warmstart_list_prints(capsys):
    from engine.cli import main

    strategies = ws.list_strategies()
    margin = next(s for s in strategies["acquisition"] if s["name"] == "margin")
    assert margin["needs"] == ["probs"]
    sp = next(s for s in strategies["init"] if s["name"] == "shrink_perturb")
    assert sp["params"] == {"shrink": 0.4, "perturb": 0.1, "bn_stats": "fresh"}
    assert {"digits", "cifar10"} <= {d["name"] for d in ws.list_datasets()}
    assert "mlp" in {m["name"] for m in ws.list_models()}
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for entry in strategies["init"] + strategies["acquisition"]:
        assert f"  {entry['name']}(" in printed


def test_rows_in_one_folder_share_one_schema_so_pandas_reads_every_column(tmp_path):
    out = str(tmp_path / "out")
    ws.run_trial({**FAST, "init": "warm", "rounds": {**FAST["rounds"], "max_rounds": 1}}, out)
    ws.run_trial(
        {**FAST, "init": {"name": "warm_partial", "blocks": 2}, "rounds": {**FAST["rounds"], "max_rounds": 1}}, out
    )
    files = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
    schemas = {str(pq.read_schema(os.path.join(out, f))) for f in files}
    assert len(files) == 2 and len(schemas) == 1
    table = pd.read_parquet(out)
    assert sorted(table["cfg.init.blocks"].dropna().tolist()) == [2]


def test_record_columns_are_the_schema_prefix_and_results_know_them():
    from engine.storage.store import SCHEMA

    assert SCHEMA.names == RECORD_COLUMNS
    assert arrow_schema().names[: len(RECORD_COLUMNS)] == RECORD_COLUMNS


@pytest.fixture
def entry_point_plugin(tmp_path, monkeypatch):
    """An installed package (a real .dist-info on sys.path) whose entry point registers an
    acquisition strategy; the registry and the loaded-plugin bookkeeping are restored after."""
    site = tmp_path / "site"
    package = site / "ws_ep_demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from strategies.acquisition import register

            @register("ep_first")
            def ep_first(outputs, k, rng):
                '''Picks the first k pool positions (an entry-point plugin).'''
                return list(range(k))
            """
        )
    )
    info = site / "ws_ep_demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ws-ep-demo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[warmstart.plugins]\ndemo = ws_ep_demo\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(ACQUISITION_STRATEGIES, "_entries", dict(ACQUISITION_STRATEGIES._entries))
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    yield
    sys.modules.pop("ws_ep_demo", None)


@pytest.mark.usefixtures("entry_point_plugin")
def test_an_installed_entry_point_plugin_loads_without_being_named():
    df = ws.run_trial({**FAST, "acquisition": "ep_first", "rounds": {**FAST["rounds"], "max_rounds": 2}})
    assert df["acquisition"].tolist() == ["ep_first", "ep_first"]
    assert "ep_first" in {s["name"] for s in ws.list_strategies()["acquisition"]}
    source = open(sys.modules["ws_ep_demo"].__file__, "rb").read()  # the entry point's module: its code's hash
    assert set(df["plugins"]) == {f'{{"ws_ep_demo": "{hashlib.sha256(source).hexdigest()[:12]}"}}'}


def test_the_cli_starts_without_torch_and_prints_its_version():
    # --help and --version answer without importing torch, Ray or pandas (the slow imports).
    probe = "import sys, engine.cli; print(sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
    version = subprocess.run([sys.executable, "-m", "engine", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"warmstart {ws.__version__}"
