"""docs/python-api.md cannot rot: its cells run, in order, in one namespace, as a notebook
would run them (in a temporary folder, on the tests' shared Ray instance)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "python-api.md").read_text()


def cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE, re.S)


def test_the_guide_has_cells_for_every_public_function():
    text = "".join(cells())
    for name in ("run_trial", "Trial", "run_suite", "load", "list_strategies", "ConfigError"):
        assert f"ws.{name}" in text, name


def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch, ray_address, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, cell in enumerate(cells(), 1):
        try:
            exec(compile(cell, f"docs/python-api.md cell {number}", "exec"), namespace)
        except Exception as exc:  # name the cell: a traceback into exec'd text is hard to place
            pytest.fail(f"cell {number} failed: {type(exc).__name__}: {exc}\n{cell}")
    printed = capsys.readouterr().out
    # What the cells claim, checked on what they computed.
    assert "The 'shrink' parameter of shrink_perturb must be a float in [0, 1]. Got 1.5." in printed
    assert list(namespace["df"]["round"]) == [1, 2, 3]
    assert namespace["first"].outputs is None and namespace["second"].outputs.probs.shape[1] == 10
    assert len(namespace["table"]) == 3  # the notebook's trial, once, whatever ran it
    assert sorted(namespace["suite"]["init"].astype(str).unique()) == ["random", "warm"]
    assert len(namespace["suite"]) == 4  # 2 trials x 2 rounds
