"""Every row says what made it: the round's UTC start and end, the code (version, git commit),
the libraries, the device, ATen's CPU capability and the host (engine/trial/provenance.py)."""

from __future__ import annotations

import socket
import subprocess
from datetime import UTC

import pyarrow.parquet as pq
import pytest
import torch

from engine import __version__
from engine.cli import main
from engine.trial import provenance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETS = ["device=cpu", "rounds.max_rounds=2", "convergence.max_epochs=3", "rounds.initial=100", "rounds.per_round=50"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("prov") / "out"
    assert main(["run", "--quiet", "--out", str(out)] + sum((["--set", s] for s in SETS), [])) == 0
    return pq.read_table(out)


def test_rows_carry_their_provenance(table):
    rows = sorted(table.to_pylist(), key=lambda r: r["round"])
    assert table.schema.field("started_at").type == table.schema.field("ended_at").type
    assert str(table.schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    for row in rows:
        assert row["started_at"].tzinfo is not None and row["started_at"].utcoffset().total_seconds() == 0
        assert row["started_at"] <= row["ended_at"]
        assert row["warmstart_version"] == __version__
        assert row["torch_version"] == torch.__version__
        assert row["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
        assert row["host"] == socket.gethostname()
        assert row["threads"] == torch.get_num_threads() >= 1
        assert row["device_name"] == provenance._cpu_model() and row["device_name"]
    assert rows[0]["ended_at"] <= rows[1]["started_at"]  # round 2 starts after round 1's row


def test_git_columns_name_the_checkout_the_engine_runs_from(table):
    head = subprocess.run(
        ["git", "-C", str(provenance.PACKAGE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    row = table.slice(0, 1).to_pylist()[0]
    if head.returncode != 0:  # an installed copy, not a checkout
        assert row["git_commit"] is None and row["git_dirty"] is None
    else:
        assert row["git_commit"] == head.stdout.strip()
        assert isinstance(row["git_dirty"], bool)


def test_outside_a_checkout_the_git_columns_are_null(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path)
    assert provenance.git_state() == (None, None)


def test_a_checkout_above_the_package_is_not_its_checkout(tmp_path, monkeypatch):
    """An installed package inside some other repository (a venv in a project) has no commit of its own."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site").mkdir()
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path / "site")
    assert provenance.git_state() == (None, None)


def test_now_is_utc():
    assert provenance.now().tzinfo is UTC


def test_an_installed_copy_inside_another_repository_records_no_commit(tmp_path):
    """What pip installs (the packages' files, no .git) into a virtualenv that lies inside a
    project's own git repository: its rows name no commit, neither the project's nor any other."""
    import shutil
    import sys

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    site = tmp_path / ".venv" / "site-packages"
    for package in ("engine", "strategies", "warmstart"):
        shutil.copytree(provenance.PACKAGE_ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    probe = "from engine.trial import provenance as p; print(p.PACKAGE_ROOT); c = p.static_columns(); print(c['git_commit'], c['git_dirty'])"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == [str(site), "None None"]


def test_dirty_means_changed_tracked_files_or_new_files_in_the_packages(tmp_path, monkeypatch):
    """A new module under strategies/ that git does not track yet is code the commit lacks:
    dirty; a stray file beside the packages (notes, a results folder) is not."""

    def git(*args):
        env = {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True, env=env)

    git("init", "-q")
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "init.py").write_text("A = 1\n")
    git("add", ".")
    git("commit", "-qm", "one")
    commit = git("rev-parse", "HEAD").stdout.strip()
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")
    assert provenance.git_state() == (commit, False)
    (tmp_path / "strategies" / "mine.py").write_text("B = 2\n")
    assert provenance.git_state() == (commit, True)
    (tmp_path / "strategies" / "mine.py").unlink()
    (tmp_path / "strategies" / "init.py").write_text("A = 2\n")
    assert provenance.git_state() == (commit, True)
