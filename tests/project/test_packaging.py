"""What a user installing the package notices: a built wheel holds the shipped suites and
the public package, the README and docs/ link only to files and sections that exist in the
repository, and docs/results.md's column table is the row schema's."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine.schema import records

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
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


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (code blocks left out): lower case, punctuation
    dropped, spaces as hyphens; a repeated heading gets -1, -2, ..."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(next(s for n in range(100) if (s := slug if n == 0 else f"{slug}-{n}") not in anchors))
    return anchors


def test_readme_and_docs_link_only_to_files_in_the_repository():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    assert {"config.md", "results.md", "guarantees.md", "suites.md", "architecture.md"} <= {d.name for d in docs}
    for doc in docs:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve() if target else doc
            assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"
            # A section moved to another page breaks its old links: anchors are checked too.
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path.read_text()), f"{doc.name} links to a missing section: {target}#{anchor}"
        # A path named in code spans counts too: nothing a reader is sent to lives outside.
        assert not re.findall(r"`\.\./[^`]*`", doc.read_text()), f"{doc.name} names a file outside the repository"


def test_the_column_table_in_the_docs_is_the_row_schema():
    """docs/results.md's table is column_table()'s output: a field added, renamed or described
    anew in RoundRecord without regenerating the page fails here."""
    page = (ROOT / "docs" / "results.md").read_text()
    assert page.count(records.COLUMNS_BEGIN) == 1 and page.count(records.COLUMNS_END) == 1
    shown = page.split(records.COLUMNS_BEGIN)[1].split(records.COLUMNS_END)[0]
    assert shown == records.column_table(), "regenerate: python -m engine.schema.records docs/results.md"
    # Every column a row has is in the table, by name or under its cfg section.
    names = set(re.findall(r"^\| `([^`]+)` \|", shown, flags=re.M))
    for column, _ in records.record_fields() + records.config_fields():
        section = column.split(".")[0] + "." + column.split(".")[1] + ".*" if column.count(".") > 1 else None
        assert column in names or section in names, f"{column} is not in docs/results.md's table"
