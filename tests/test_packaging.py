"""What a user installing the package notices: a built wheel holds the shipped suites and
the public package, and the README links only to files that exist in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_suites_and_the_public_package(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("warmstart-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"engine/suites/{p.name}" for p in (ROOT / "engine" / "suites").glob("*.yaml")}
    assert "engine/suites/quickstart.yaml" in shipped and shipped <= names
    assert {"warmstart/__init__.py", "engine/api.py", "strategies/init.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "warmstart = engine.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_readme_and_docs_link_only_to_files_in_the_repository():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"
        # A path named in code spans counts too: nothing a reader is sent to lives outside.
        assert not re.findall(r"`\.\./[^`]*`", doc.read_text()), f"{doc.name} names a file outside the repository"
