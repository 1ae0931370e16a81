"""Ray Train: data-parallel correctness, identical init on every rank, and resume after a
worker or the driver dies.  All tests share one local Ray instance (``ray_address``)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from engine.cli import main
from engine.compute.models import mlp
from engine.compute.train import LOCAL, fit

# Ray Train worker groups, and drivers and workers killed.
pytestmark = pytest.mark.slow

QUICK = ["--set", "rounds.max_rounds=3", "--quiet"]


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(comm, n: int, batch_size: int, optimizer: str) -> dict:
    """One epoch of ``fit`` from the same initial weights; returns the trained parameters."""
    torch.manual_seed(0)
    model = mlp((1, 8, 8), 10)
    x, y = _data(n, seed=1)
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-3)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    convergence = SimpleNamespace(train_acc=1.0, patience=None, min_delta=0.0, max_epochs=1)
    stats = fit(model, x, y, opt, batch_size, convergence, seed=5, comm=comm)
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "steps": stats.steps,
        "acc": stats.train_acc,
    }


CASES = {"one_step": (64, 64, "adam"), "one_epoch": (200, 48, "sgd")}  # n, global batch, optimizer


def _step_worker(config: dict) -> None:
    import torch.distributed as dist

    from engine.trial.distributed import TorchComm

    comm = TorchComm(torch.device("cpu"))
    results = {name: _train(comm, *case) for name, case in CASES.items()}
    if dist.get_rank() == 0:
        torch.save(results, config["path"])


def test_data_parallel_step_equals_in_process_step(ray_address, tmp_path):
    import ray.cloudpickle
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    # Workers cannot import this test module: ship _step_worker and its helpers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path = str(tmp_path / "ddp.pt")
    TorchTrainer(_step_worker, train_loop_config={"path": path}, scaling_config=ScalingConfig(num_workers=2)).fit()
    ddp = torch.load(path)
    for name, case in CASES.items():
        local = _train(LOCAL, *case)
        assert ddp[name]["steps"] == local["steps"]
        assert ddp[name]["acc"] == pytest.approx(local["acc"], abs=1e-12)
        for key, value in local["state"].items():
            torch.testing.assert_close(ddp[name]["state"][key], value, rtol=0, atol=2e-6, msg=f"{name}: {key}")
        # The parameters did move: the comparison is not between two untouched models.
        torch.manual_seed(0)
        untouched = mlp((1, 8, 8), 10).state_dict()
        assert not torch.allclose(untouched["head.weight"], ddp[name]["state"]["head.weight"])


FINGERPRINT_PLUGIN = '''
import os, torch, torch.distributed as dist
from strategies.acquisition import register as register_acquisition
from strategies.init import register, shrink_perturb

OUT = {out!r}

@register("fingerprinted_shrink_perturb")
def fingerprinted(prev, fresh, shrink: float = 0.4, perturb: float = 0.1):
    """shrink_perturb that records, per rank, the exact parameters it returns."""
    model = shrink_perturb(prev, fresh, shrink, perturb)
    rank = dist.get_rank() if dist.is_initialized() else 0
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    n = len([f for f in os.listdir(OUT) if f.startswith(f"rank{{rank}}-")])
    torch.save(flat, os.path.join(OUT, f"rank{{rank}}-{{n}}.pt"))
    return model

@register("die_once")
def die_once(prev, fresh):
    """Warm start, except that rank 1 kills its own process the first time round 2 starts."""
    marker = os.path.join(OUT, "died")
    if dist.is_initialized() and dist.get_rank() == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return prev
'''


def _plugin(tmp_path) -> str:
    record = tmp_path / "record"
    record.mkdir()
    path = tmp_path / "ranks_plugin.py"
    path.write_text(FINGERPRINT_PLUGIN.format(out=str(record)))
    return str(path)


def test_two_worker_trial_matches_in_process_and_inits_identically(ray_address, tmp_path, capsys):
    plugin = _plugin(tmp_path)
    args = ["run", "--plugin", plugin, "--set", "init.name=fingerprinted_shrink_perturb", *QUICK]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--workers", "2", "--set", "eval.epochs_table=true"]) == 0

    # Every rank's init result was identical, round by round (rounds 2 and 3).
    record = tmp_path / "record"
    for i in range(2):  # in-process run wrote rank0-0, rank0-1; the Ray run rank0-2.., rank1-0..
        rank0 = torch.load(record / f"rank0-{i + 2}.pt")
        rank1 = torch.load(record / f"rank1-{i}.pt")
        assert torch.equal(rank0, rank1)
    assert not (record / "rank1-2.pt").exists()

    local = pd.read_parquet(tmp_path / "local").sort_values("round").reset_index(drop=True)
    ray_rows = pd.read_parquet(tmp_path / "ray").sort_values("round").reset_index(drop=True)
    assert list(ray_rows.columns) == list(local.columns)
    # Each worker imported the plugin itself: the same code identity as the driver's process.
    digest = hashlib.sha256(open(plugin, "rb").read()).hexdigest()[:12]
    assert set(ray_rows["plugins"]) == set(local["plugins"]) == {f'{{"ranks_plugin.py": "{digest}"}}'}
    assert ray_rows["round"].tolist() == [1, 2, 3]
    assert set(ray_rows["world_size"]) == {2} and set(local["world_size"]) == {1}
    # Rank 0's provenance, as in-process: the same machine, versions and checkout.
    for column in ("host", "cpu_isa", "torch_version", "ray_version", "device_name", "git_commit", "warmstart_version"):
        assert ray_rows[column].tolist() == local[column].tolist(), column
    assert (ray_rows["started_at"] < ray_rows["ended_at"]).all() and ray_rows["ray_version"].notna().all()
    assert ray_rows["n_labeled"].tolist() == local["n_labeled"].tolist() == [100, 200, 300]
    # Random acquisition depends on the seed only: identical picks.
    assert [list(a) for a in ray_rows["acquired"]] == [list(a) for a in local["acquired"]]
    assert [list(c) for c in ray_rows["acquired_classes"]] == [list(c) for c in local["acquired_classes"]]
    # Rank 0 alone wrote the per-epoch table: one row per epoch of each round.
    epochs = pd.read_parquet(tmp_path / "ray" / "_epochs")
    assert epochs.groupby("round")["epoch"].max().tolist() == ray_rows["epochs"].tolist()
    assert len(epochs) == ray_rows["epochs"].sum() and not (tmp_path / "local" / "_epochs").exists()
    # Same optimisation up to float summation order.
    assert (ray_rows["test_acc"] - local["test_acc"]).abs().max() <= 0.03
    assert (ray_rows["epochs"] - local["epochs"]).abs().max() <= 3


def test_worker_death_restarts_and_keeps_every_round_once(ray_address, tmp_path):
    plugin = _plugin(tmp_path)
    out = tmp_path / "out"
    code = main(["run", "--plugin", plugin, "--set", "init.name=die_once", "--workers", "2", "--out", str(out), *QUICK])
    assert code == 0
    assert (tmp_path / "record" / "died").exists()  # rank 1 really died in round 2
    table = pd.read_parquet(out)
    assert sorted(table["round"]) == [1, 2, 3]
    assert sorted(table["n_labeled"]) == [100, 200, 300]
    acquired = [i for a in table["acquired"] for i in a]
    assert len(acquired) == len(set(acquired)) == 300


def test_driver_death_then_rerun_resumes(ray_address, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--workers", "2", "--out", str(out), "--set", "rounds.max_rounds=12", "--quiet"]
    driver = subprocess.Popen([sys.executable, "-m", "engine", *args, "--address", ray_address], env=os.environ.copy())
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*-round0001.parquet")):
        assert driver.poll() is None, "the driver ended before its first round"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = len(list(out.glob("*.parquet")))
    assert 1 <= done_before < 12, "the driver should die mid-trial"

    assert main(args) == 0
    table = pd.read_parquet(out)
    assert sorted(table["round"]) == list(range(1, 13))
    acquired = [i for a in table["acquired"] for i in a]
    assert len(acquired) == len(set(acquired)) == 1198
