"""Property-based tests (hypothesis) over the config space and the ``--set`` grammar:
every input either runs or is refused with exit status 2 and one line — never a
traceback, and nothing written on refusal."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.errors import ConfigError, TrialError
from engine.schema.config import DEFAULTS, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dotted(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


KNOWN = _dotted(DEFAULTS) + [
    "model.name",
    "model.width",
    "model.depth",
    "model.activation",
    "model.dropout",
    "init.name",
    "init.shrink",
    "init.perturb",
    "init.bn_stats",
    "init.blocks",
    "acquisition.name",
    "acquisition.mc_samples",
    "pretrain",
    "pretrain.fraction",
    "model",
    "init",
    "rounds",
]
NAMES = ["mlp", "logreg", "resnet18", "random", "warm", "shrink_perturb", "margin", "bald", "digits", "nope", ""]
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [".inf", "-.inf", ".nan", "1e-4", "1e400", "0x10", "null", "~", "true", "no", "[]", "{}", "[1, 2]"]
    ),
    st.sampled_from(
        ["{name: warm}", "{shrink: 2}", "{a: 1}", "[", "]", ": :", "'x", '"', "{", "!!python/object:os.system"]
    ),
    st.sampled_from(NAMES),
    st.text(max_size=12),
)
ASSIGNMENT = st.one_of(
    st.tuples(st.sampled_from(KNOWN), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.text(max_size=10), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=15),  # no '=' at all, empty keys, stray dots
)
# Appended last, so every generated config that validates runs in about a second on the CPU:
# one round, at most two epochs, no download, no Ray, no compilation.
QUICK = [
    "device=cpu",
    "rounds.max_rounds=1",
    "convergence.max_epochs=2",
    "dataset.download=false",
    "scaling.workers=null",
    "performance.compile=false",
]


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ASSIGNMENT, max_size=4))
def test_every_set_either_validates_or_is_one_config_error(assignments):
    try:
        build(None, assignments)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(assignments=st.lists(ASSIGNMENT, max_size=3))
def test_every_input_runs_or_exits_2_with_one_line_and_writes_nothing(assignments, capsys):
    root = Path(tempfile.mkdtemp())
    out = root / "out"
    try:
        argv = ["run", "--out", str(out), "--quiet"]
        for assignment in [*assignments, *QUICK]:
            argv += ["--set", assignment]
        code = main(argv)  # an exception escaping main fails the test: that is a traceback for the user
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code == 2:
            lines = err.strip("\n").splitlines()
            assert len(lines) == 1 and lines[0].startswith("warmstart: error: "), err
            assert not out.exists(), f"refused, but wrote {list(out.rglob('*'))}"
        elif code == 1:  # it ran, and a round diverged: said in one line, rows kept
            assert "diverged" in err
        else:
            assert code == 0, err
            assert list(out.glob("*-round0001.parquet")), "ran, but wrote no row"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_trial_errors_are_not_config_errors():
    # Exit 2 is for input a user must change; exit 1 for a run that stopped (TrialError).
    assert not issubclass(TrialError, ConfigError) and not issubclass(ConfigError, TrialError)
