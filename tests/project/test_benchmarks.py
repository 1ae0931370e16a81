"""benchmarks.perf and the GPU check (benchmarks.gpu, benchmarks.packing) run end to end
and measure what they say (equal work on both sides of each comparison); the FLOP count
is right; the GPU check needs no Ray.  No timing is asserted: the figures are in
benchmarks/README.md."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu, perf
from engine.compute.models import build_model
from strategies.acquisition import ACQUISITION_STRATEGIES


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf") / "perf.json"
    assert perf.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_perf_quick_writes_every_section(quick_report):
    r = quick_report
    assert r["quick"] is True and r["command"].endswith("--quick --repeats 1 --out " + r["command"].split()[-1])
    assert r["targets"] == perf.TARGETS
    assert r["ray_overhead"] is None  # skipped by --quick
    assert "gpu" not in r  # CPU run
    assert [f"{c['model']}/{c['data']}" for c in r["engine_vs_plain"]] == [
        "mlp/digits",
        "resnet18/digits",
        "mlp/cifar",
        "resnet18/cifar",
    ]
    assert {c["model"] for c in r["scoring"]} == {"mlp", "resnet18"}
    for section in ("engine_vs_plain", "engine_vs_reference", "scoring"):
        for case in r[section]:
            assert case["device"] == "cpu"


@pytest.mark.slow
def test_engine_and_plain_did_the_same_work(quick_report):
    for case in quick_report["engine_vs_plain"]:
        assert case["same_result"] is True, case["model"]
        assert case["steps"] > 0
        wall = case["wall_seconds"]
        assert len(wall["engine"]) == len(wall["plain"]) == case["repeats"] == 3  # --quick: 3 pairs
        assert wall["ratio"] == pytest.approx(wall["median_engine"] / wall["median_plain"])
        assert case["meets_target"] is (wall["ratio"] <= perf.TARGETS["engine_vs_plain"])


@pytest.mark.slow
def test_reference_did_the_same_steps_as_the_engine(quick_report):
    for case, spec in zip(quick_report["engine_vs_reference"], perf.REFERENCE_CASES, strict=True):
        assert case["n"] == spec.quick_n and case["epochs"] == spec.quick_epochs
        assert case["steps"] == spec.quick_epochs * math.ceil(spec.quick_n / perf.BATCH_SIZE)
        assert case["speedup"] == pytest.approx(case["reference_seconds"]["median"] / case["engine_seconds"]["median"])
        assert case["performance"]["autocast"] is False  # auto is the plain path on CPU
        assert case["meets_target"] is ((case["speedup"] >= 3.0) if case["model"] == "mlp" else None)


@pytest.mark.slow
def test_scoring_scores_the_unlabeled_pool_and_picks_k(quick_report):
    for case, spec in zip(quick_report["scoring"], perf.SCORING_CASES, strict=True):
        assert case["pool_unlabeled"] == spec.quick_pool - min(spec.labeled, spec.quick_pool // 4)
        assert case["picked"] == min(perf.K, case["pool_unlabeled"])
        assert case["batch_size"] == 1024  # eval.batch_size: the CPU default of inference_batch_size
        n = case["pool_unlabeled"]
        assert case["engine_samples_per_s"] == pytest.approx(n / case["engine_seconds"]["median"])
        assert case["ratio"] == pytest.approx(case["engine_samples_per_s"] / case["bare_samples_per_s"])
        assert case["meets_target"] is (case["ratio"] >= perf.TARGETS["scoring"])


@pytest.mark.parametrize(("width", "gmacs"), [(64, 0.5555), (16, 0.0350)])
def test_count_macs_of_resnet18(width, gmacs):
    model = build_model("resnet18", {"width": width}, (3, 32, 32), 10)
    assert perf.count_macs(model, (3, 32, 32)) / 1e9 == pytest.approx(gmacs, rel=2e-3)


def test_count_macs_leaves_batchnorm_statistics_alone():
    model = build_model("resnet18", {"width": 16}, (3, 32, 32), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perf.count_macs(model, (3, 32, 32))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert perf.main(["--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err


def test_bad_repeats_is_refused(capsys):
    assert perf.main(["--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_section_code_runs_on_cpu(monkeypatch, capsys):
    """The GPU section's arithmetic and report, run on the CPU at toy size (its figures mean
    nothing here; on a GPU, ``--device cuda`` runs the same code at full size).  Compiled
    option sets are left out: a cold compile costs a minute on CPU."""
    cpu = torch.device("cpu")
    sets = {k: v for k, v in perf.GPU_OPTION_SETS.items() if "compile" not in k}
    monkeypatch.setattr(perf, "GPU_OPTION_SETS", sets)
    peak = perf.peak_bf16_tflops(cpu, size=128, iterations=2)
    assert peak > 0
    rows = perf.gpu_width(cpu, width=4, n=256, epochs=1, repeats=1, peak=peak)
    assert [r["options"] for r in rows] == list(sets)
    macs = perf.count_macs(build_model("resnet18", {"width": 4}, (3, 32, 32), 10), (3, 32, 32))
    for r in rows:
        assert r["forward_macs_per_image"] == macs
        assert r["images_per_s"] == pytest.approx(256 / r["median_seconds"])
        floor = 1 / (perf.TRAIN_OVER_FORWARD * 2 * macs / (peak * 1e12))
        assert r["floor_images_per_s"] == pytest.approx(floor)
        assert r["time_over_floor"] == pytest.approx(floor / r["images_per_s"])
        assert r["fraction_of_peak"] == pytest.approx(1 / r["time_over_floor"])
    by_name = {r["options"]: r["performance"] for r in rows}
    assert by_name["plain"] == perf.PLAIN.to_dict()
    assert by_name["channels_last"]["channels_last"] is True and by_name["autocast"]["autocast"] is True
    report = {
        "machine": {**perf.round_vs_plain.machine([cpu]), "load_average_end": [0.0, 0.0, 0.0], "gpu": "toy"},
        "command": "test",
        "quick": True,
        "engine_vs_plain": [],
        "engine_vs_reference": [],
        "scoring": [],
        "ray_overhead": None,
        "gpu": {"peak_bf16_tflops": peak, "training": rows},
    }
    perf.print_report(report)
    printed = capsys.readouterr().out
    assert "gpu           toy" in printed
    assert f"width 4: {macs / 1e9:.3f}" in printed
    assert sum(line.strip().startswith("4 ") for line in printed.splitlines()) == len(sets)


# --- the GPU check (benchmarks/gpu_check.sh -> benchmarks.gpu, benchmarks.packing) -----------


@pytest.fixture(scope="module")
def gpu_smoke(tmp_path_factory):
    """The GPU check's code at toy sizes on the CPU (no graph variants: they need CUDA)."""
    out = tmp_path_factory.mktemp("gpu_check")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert gpu.main(["--smoke", "--device", "cpu", "--out", str(out), "--packs", "1,2"]) == 0
    finally:
        torch.set_num_threads(before)
    return out, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_section(gpu_smoke):
    out, report = gpu_smoke
    assert report["errors"] == {}
    assert [c["case"] for c in report["steps"]] == [c.name for c in gpu.SMOKE_CASES]
    for case in report["steps"]:
        assert set(case["runs"]) == {"bare eager", "engine plain", "engine auto-graphs"}
        steps = {r["steps"] for r in case["runs"].values()}
        assert steps == {math.ceil(case["n"] / gpu.BATCH) * case["epochs"]}  # the same work on every side
        for r in case["runs"].values():
            assert r["images_per_s"] == pytest.approx(r["steps"] * gpu.BATCH / r["median_seconds"])
            assert r["capture_seconds"] is None  # nothing is captured on a CPU
    assert report["same"] == []
    assert [r["picked"] for r in report["scoring"]["margin"]] == [10, 10]
    assert set(report["scoring"]["strategies"]) == set(ACQUISITION_STRATEGIES.names())
    assert all(r["same_picks"] for r in report["scoring"]["strategies"].values())
    runs = report["packing"]["runs"]
    assert [r["concurrent"] for r in runs] == [1, 2] and all(r["rounds"] == 2 * 2 for r in runs)
    table = json.loads((out / "packing.json").read_text())
    assert set(table["rounds_per_gpu_minute"]) == {"1", "2"} and table["chosen"] in (1, 2)


@pytest.mark.slow
def test_gpu_check_prints_its_tables(gpu_smoke, capsys):
    gpu.print_report(gpu_smoke[1])
    printed = capsys.readouterr().out
    for heading in ("steps: batch 128", "same: graphed engine", "scoring: margin on the device", "packing: mlp"):
        assert heading in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_without_a_gpu_needs_smoke(tmp_path, capsys):
    assert gpu.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--smoke" in capsys.readouterr().err


@pytest.mark.slow
def test_the_gpu_check_never_imports_ray():
    """The GPU machine has no Ray: every module the check imports must load without it."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import benchmarks.gpu, benchmarks.packing, benchmarks.perf, engine.suite.packing, engine.trial.loop\n"
        "assert sys.modules['ray'] is None\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0


def test_asha_vs_grid_scores_regret_and_ranks():
    """benchmarks.asha_vs_grid's arithmetic on a made-up 2x2 grid (its runs are in the README)."""
    import pandas as pd

    from benchmarks import asha_vs_grid

    shrinks, perturbs = asha_vs_grid.axes(6)
    assert shrinks[0] == 0.1 and shrinks[-1] == 1.0 and perturbs[0] == 0.001 and perturbs[-1] == 0.3
    assert perturbs[1] / perturbs[0] == pytest.approx(perturbs[-1] / perturbs[-2], rel=1e-3)  # log-spaced
    # Point quality: (0.1, 0.01) 0.9 > (0.1, 0.1) 0.8 > (1.0, 0.01) 0.7 > (1.0, 0.1) 0.6; seeds +- 0.01.
    quality = {(0.1, 0.01): 0.9, (0.1, 0.1): 0.8, (1.0, 0.01): 0.7, (1.0, 0.1): 0.6}

    def frame(reached: dict) -> pd.DataFrame:
        rows = []
        for (shrink, perturb), acc in quality.items():
            for seed, noise in ((0, -0.01), (1, 0.01)):
                for round_ in range(1, reached[shrink, perturb] + 1):
                    rows.append(
                        {
                            "trial_id": f"{shrink}-{perturb}-{seed}",
                            "cfg.init.shrink": shrink,
                            "cfg.init.perturb": perturb,
                            "round": round_,
                            "test_acc": acc + noise,
                            "steps": 10,
                        }
                    )
        return pd.DataFrame(rows)

    full = frame(dict.fromkeys(quality, 3))
    # ASHA ran the second-best point to the end, and stopped the best one early.
    asha = frame({(0.1, 0.01): 1, (0.1, 0.1): 3, (1.0, 0.01): 3, (1.0, 0.1): 1})
    result = asha_vs_grid.compare(full, asha, rounds=3)
    assert result["full_best"]["score"] == pytest.approx(0.9)
    assert (result["asha_chosen"]["shrink"], result["asha_chosen"]["perturb"]) == (0.1, 0.1)
    assert result["regret"] == pytest.approx(0.1) and result["asha_chosen"]["full_rank"] == 2
    assert result["seed_std"] == pytest.approx(pd.Series([0.89, 0.91]).std())
    assert result["survivors_full_ranks"] == [2, 3]
    # ASHA's order (survivors 0.8, 0.7, then stopped 0.9, 0.6) against the grid's (0.9, 0.8, 0.7, 0.6).
    assert result["spearman_all_points"] == pytest.approx(0.4)
    assert result["points_by_rounds_reached"] == {1: 2, 3: 2}


def _tiny_wheel(path: Path) -> None:
    """A wheel of three files, one of them executable, under a correct RECORD."""
    import zipfile

    from benchmarks.wheels import record_hash

    files = {
        "pkg/__init__.py": b"x = 1\n",
        "pkg/jars/big.jar": b"\0" * 5000,
        "pkg/bin/tool": b"#!/bin/sh\necho hi\n",
        "pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n",
    }
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("tool") else 0o644) << 16
            z.writestr(info, data)
        z.writestr("pkg-1.0.dist-info/RECORD", record + "pkg-1.0.dist-info/RECORD,,\n")


def test_a_stripped_wheel_has_a_record_that_matches_its_contents(tmp_path):
    """benchmarks/gpu_wheels.sh repacks Ray without ray/jars: the RECORD must lose those lines."""
    import zipfile

    from benchmarks.wheels import check, strip

    src, dst = tmp_path / "pkg-1.0-py3-none-any.whl", tmp_path / "out" / "pkg-1.0-py3-none-any.whl"
    _tiny_wheel(src)
    assert check(src) == []
    done = strip(src, dst, ["pkg/jars"])
    assert done == {"dropped_files": 1, "dropped_bytes": 5000, "record_lines": 4}
    assert check(dst) == []
    with zipfile.ZipFile(dst) as z:
        assert (
            "pkg/jars/big.jar" not in z.namelist()
            and "pkg/jars/big.jar" not in z.read("pkg-1.0.dist-info/RECORD").decode()
        )
        assert z.getinfo("pkg/bin/tool").external_attr >> 16 == 0o755  # executables stay executable
        assert z.read("pkg/__init__.py") == b"x = 1\n"
    # The check can fail: a wheel that drops a file but keeps its RECORD line.
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "bad.whl", "w") as zout:
        for info in zin.infolist():
            if info.filename != "pkg/jars/big.jar":
                zout.writestr(info, zin.read(info))
    assert check(tmp_path / "bad.whl") == ["pkg/jars/big.jar: in the RECORD, not in the wheel"]


def test_ray_gpu_compares_rows_by_the_ray_train_criteria():
    """benchmarks.ray_gpu's verdicts: equal rows pass, a different pick or a duplicated round fails."""
    import pandas as pd

    from benchmarks.ray_gpu import compare, every_round_once

    def rows(picks, acc=(0.5, 0.6), trial="t"):
        return pd.DataFrame(
            {
                "trial_id": trial,
                "round": [1, 2],
                "n_labeled": [10, 20],
                "acquired": picks,
                "test_acc": list(acc),
                "epochs": [3, 4],
                "device": "cuda",
                "world_size": 1,
                "performance": "{}",
            }
        )

    local = rows([[1, 2], [3, 4]])
    assert compare(local, rows([[1, 2], [3, 4]], acc=(0.52, 0.6)))["ok"]
    differs = compare(local, rows([[1, 2], [3, 5]]))
    assert not differs["ok"] and differs["checks"]["same_picks"] is False
    assert not compare(local, rows([[1, 2], [3, 4]], acc=(0.5, 0.7)))["checks"]["test_acc_within"]
    two = pd.concat([rows([[1], [2]], trial="a"), rows([[1], [2]], trial="b")])
    assert every_round_once(two, trials=2, rounds=2) == {"trials": 2, "rows": 4, "duplicates": 0, "ok": True}
    assert not every_round_once(pd.concat([two, two.iloc[:1]]), trials=2, rounds=2)["ok"]
    assert not every_round_once(two, trials=3, rounds=2)["ok"]
