"""The rows of one fixed trial, bit for bit as the code made them before the engine was
restructured (issue 18): a refactor that changes a number, a name or a type fails here.

tests/data/rows_fixed.json was written by the code of commit 4154cd6 (the flat engine/)
running exactly TRIAL below with ``start_trial(cfg, None).run()`` on a CPU, one torch
thread.  Floats are stored as ``float.hex`` and compared exactly.  Only the golden's
columns are compared (later releases may add columns), except timings (``*_seconds``)
and ``suite``, which are not part of a trial's results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine.schema.config import build
from engine.trial.session import start_trial

GOLDEN = Path(__file__).parent / "data" / "rows_fixed.json"
TRIAL = [
    "device=cpu",
    "dataset.name=digits",
    "model.name=mlp",
    "init.name=shrink_perturb",
    "init.shrink=0.6",
    "init.perturb=0.01",
    "acquisition.name=margin",
    "rounds.initial=100",
    "rounds.per_round=50",
    "rounds.max_rounds=3",
    "convergence.max_epochs=30",
    "seed=3",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def decode(value):
    """A golden value as Python: ``{"float": hex}`` is the exact float."""
    if isinstance(value, dict) and set(value) == {"float"}:
        return float.fromhex(value["float"])
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def same(new, old) -> bool:
    """Equal, and of the same kind (1 is not 1.0 here); NaN equals NaN."""
    if isinstance(old, float):
        return isinstance(new, float) and (new == old or (math.isnan(new) and math.isnan(old)))
    if isinstance(old, list):
        return isinstance(new, (list, tuple)) and len(new) == len(old) and all(map(same, new, old))
    return type(new) is type(old) and new == old


def test_fixed_trial_reproduces_the_golden_rows_bit_for_bit():
    golden = [{k: decode(v) for k, v in row.items()} for row in json.loads(GOLDEN.read_text())]
    with start_trial(build(sets=TRIAL), None) as session:
        rows = session.run()
    assert [r["round"] for r in rows] == [g["round"] for g in golden] == [1, 2, 3]
    for row, saved in zip(rows, golden, strict=True):
        missing = sorted(set(saved) - set(row))
        assert not missing, f"round {saved['round']}: columns gone: {missing}"
        differ = {c: (row[c], saved[c]) for c in saved if not same(row[c], saved[c])}
        assert not differ, f"round {saved['round']}: (now, before) {differ}"
