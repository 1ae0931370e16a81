"""Add this machine's set to tests/trial/data/rows_fixed.json, made by the code before the engine was
restructured (commit 4154cd6), never by the code under test:

    git archive 4154cd6 | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/trial/data/make_rows_fixed.py          # this machine as it is
    PYTHONPATH=/tmp/old ATEN_CPU_CAPABILITY=avx2 python tests/trial/data/make_rows_fixed.py

It runs tests/trial/test_rows_fixed.py's TRIAL with one torch thread and appends the rows (floats as
``float.hex``; timings and ``suite`` left out, as in the first set) with what made them.  A
machine that already has a set is refused."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
GOLDEN = TESTS / "data" / "rows_fixed.json"
COMMIT = "4154cd6"


def trial() -> list[str]:
    """TRIAL of tests/trial/test_rows_fixed.py, read without importing it (it imports today's engine)."""
    for node in ast.parse((TESTS / "test_rows_fixed.py").read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["TRIAL"]:
            return ast.literal_eval(node.value)
    raise SystemExit("no TRIAL in tests/trial/test_rows_fixed.py")


def machine_here() -> dict:
    """As tests/trial/test_rows_fixed.py's machine_here (engine/trial/provenance.py's CPU model name)."""
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None
    )
    return {
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "device_name": model,
        "threads": torch.get_num_threads(),
    }


def encode(value):
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def typed(column: str, value):
    """The old code wrote cfg.performance.* as text; the golden holds them as typed since issue 23."""
    if column.startswith("cfg.performance.") and isinstance(value, str):
        return {"auto": None, "true": True, "false": False}.get(value, value)
    return value


def main() -> None:
    torch.set_num_threads(1)
    old = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or ".").resolve()
    if not (old / "engine" / "session.py").exists():
        sys.exit(f"PYTHONPATH must start with a checkout of {COMMIT} (the flat engine/), not {old}")
    from engine.config import build
    from engine.session import start_trial

    with start_trial(build(sets=trial()), None) as session:
        rows = session.run()
    golden = json.loads(GOLDEN.read_text())
    here = machine_here()
    if any(all(s["made_by"].get(k) == v for k, v in here.items()) for s in golden["sets"]):
        sys.exit(f"{GOLDEN} already has a set made on {here}")
    made_by = {"commit": COMMIT, **here}
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        made_by["env"] = f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}"
    keep = [{k: encode(typed(k, v)) for k, v in r.items() if not k.endswith("_seconds") and k != "suite"} for r in rows]
    golden["sets"].append({"made_by": made_by, "rows": keep})
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"added the rows of {made_by}")


if __name__ == "__main__":
    main()
