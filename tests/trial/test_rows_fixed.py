"""The rows of one fixed trial as the code made them before the engine was restructured
(issue 18): a refactor that changes a number, a name or a type fails here.

tests/trial/data/rows_fixed.json holds the rows the code of commit 4154cd6 (the flat engine/) wrote
running exactly TRIAL below with ``Driver([start_trial(cfg, None)]).run()`` on a CPU with one torch
thread, one set per machine that made them, each with what made it (``made_by``: ATen's CPU
capability, the torch build, the CPU model, the thread count; tests/trial/data/make_rows_fixed.py
adds a set, always from that old code).  Floats are stored as ``float.hex``.

Against a set made on this kind of machine the rows must be equal bit for bit; against the
others, counts, names, picks and types exactly and floats within the tolerance between
machines that resume uses (``engine.trial.resume.FLOAT_TOLERANCE``, docs/guarantees.md).
Only the golden's columns are compared (later releases add columns), except timings
(``*_seconds``) and ``suite``, which are not part of a trial's results.  CI runs this file
natively and under ``ATEN_CPU_CAPABILITY=avx2`` (.ci/run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine.schema.config import build
from engine.schema.records import SHORT_NAMES, with_short_names
from engine.trial.driver import Driver
from engine.trial.provenance import cpu_isa, device_name
from engine.trial.resume import FLOAT_TOLERANCE
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
THREADS = 1

# What changed on purpose since the golden rows were made, each with the issue that changed it
# (CHANGELOG.md); everything else is compared as the old code wrote it.
# Issue 24: `pretrain: null` and `model.dropout: 0.0` joined the trial's identity (no key is
# left out for holding a "neutral" value), so the trial id is another.
TRIAL_ID = "digits-mlp-shrink_perturb-margin-s3-f7f69b97b4"
# Issue 24: a row holds its config once, as cfg.* columns.  The flat copies (`init`, `lr`, ...)
# are gone: each golden one is compared with the short name results.load derives from its cfg.*
# column (records.with_short_names).  The JSON copies are gone too: what they held is in the
# cfg.* columns, compared as they are.
LEGACY_JSON = ("model_params", "init_params", "acquisition_params", "pretrain_params")


def as_now(golden: dict) -> dict:
    """A golden row with the changes made on purpose since (above) applied."""
    kept = {k: v for k, v in golden.items() if k not in LEGACY_JSON}
    return {**kept, "trial_id": TRIAL_ID, "cfg.trial_id": TRIAL_ID}


def machine_here() -> dict:
    """What decides the last bits of a CPU run (docs/guarantees.md#determinism)."""
    return {
        "cpu_isa": cpu_isa(),
        "torch_version": torch.__version__,
        "device_name": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
    }


def same_machine(made_by: dict, here: dict) -> bool:
    """The set was made on this kind of machine (a value not recorded is not a match)."""
    return all(made_by.get(key) == value for key, value in here.items())


def decode(value):
    """A golden value as Python: ``{"float": hex}`` is the exact float."""
    if isinstance(value, dict) and set(value) == {"float"}:
        return float.fromhex(value["float"])
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def same(new, old, tolerant: bool = False) -> bool:
    """Equal, and of the same kind (1 is not 1.0 here); NaN equals NaN; floats within
    FLOAT_TOLERANCE when ``tolerant``."""
    if isinstance(old, float):
        if not isinstance(new, float):
            return False
        return (
            new == old
            or (math.isnan(new) and math.isnan(old))
            or (tolerant and math.isclose(new, old, **FLOAT_TOLERANCE))
        )
    if isinstance(old, list):
        return (
            isinstance(new, (list, tuple))
            and len(new) == len(old)
            and all(same(n, o, tolerant) for n, o in zip(new, old, strict=True))
        )
    return type(new) is type(old) and new == old


def differences(rows: list[dict], golden: list[dict], tolerant: bool) -> list[str]:
    """Where ``rows`` differ from a golden set's rows, one entry per round and column."""
    found = [] if [r["round"] for r in rows] == [g["round"] for g in golden] else ["rounds"]
    for row, saved in zip(rows, golden, strict=False):  # a missing round is "rounds" above
        missing = sorted(set(saved) - set(row))
        found += [f"round {saved['round']}: columns gone: {missing}"] if missing else []
        found += [
            f"round {saved['round']}: {c} (now, before) {(row[c], saved[c])}"
            for c in saved
            if c in row and not same(row[c], saved[c], tolerant)
        ]
    return found


GOLDEN_SETS = json.loads(GOLDEN.read_text())["sets"]


def _name(made_by: dict) -> str:
    return "-".join(str(made_by.get(k)) for k in ("cpu_isa", "torch_version", "device_name")).replace(" ", "_")


@pytest.fixture(scope="module")
def rows():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with Driver([start_trial(build(sets=TRIAL), None)]) as driver:
            return driver.run()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def here():
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return machine_here()
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.parametrize("golden", GOLDEN_SETS, ids=[_name(s["made_by"]) for s in GOLDEN_SETS])
def test_fixed_trial_reproduces_the_golden_rows(rows, here, golden):
    """Bit for bit where the set was made on this kind of machine, within the tolerance between machines elsewhere."""
    exact = same_machine(golden["made_by"], here)
    saved = [as_now({k: decode(v) for k, v in row.items()}) for row in golden["rows"]]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert not set(SHORT_NAMES) & set().union(*rows)  # the rows hold the cfg.* columns alone
    found = differences([with_short_names(r) for r in rows], saved, tolerant=not exact)
    how = "bit for bit" if exact else f"within {FLOAT_TOLERANCE} (made on {golden['made_by']}, this is {here})"
    assert not found, f"{how}: {found}"


def test_the_comparison_can_fail(rows):
    """The tolerance lets float noise through and nothing else: a count, a pick, a type, a float off by more."""
    golden = [dict(r) for r in rows]
    nudged = [dict(r, test_loss=math.nextafter(r["test_loss"], math.inf)) for r in golden]
    assert differences(rows, golden, tolerant=False) == []
    assert len(differences(rows, nudged, tolerant=False)) == 3  # one ulp, every round: not bit for bit
    assert differences(rows, nudged, tolerant=True) == []
    for change in ({"test_loss": rows[0]["test_loss"] * 1.001}, {"epochs": rows[0]["epochs"] + 1}):
        assert len(differences(rows, [dict(golden[0], **change), *golden[1:]], tolerant=True)) == 1
    picks = [dict(golden[0], acquired=[*rows[0]["acquired"][:-1], -1]), *golden[1:]]
    assert len(differences(rows, picks, tolerant=True)) == 1
    assert len(differences(rows, [dict(golden[0], epochs=float(rows[0]["epochs"])), *golden[1:]], tolerant=True)) == 1


def test_a_set_matches_only_its_own_kind_of_machine(here):
    assert same_machine(dict(here, commit="4154cd6"), here)
    for key in here:
        assert not same_machine(dict(here, **{key: None}), here)  # unknown: compared within the tolerance
    assert not same_machine(dict(here, cpu_isa="AVX2" if here["cpu_isa"] != "AVX2" else "AVX512"), here)
