"""The results store: one Parquet file per (trial, round), and each trial's checkpoint beside them.

Layout under ``--out`` (a local path or a URI pyarrow understands, e.g. ``s3://bucket/x``):

    <trial_id>-round0001.parquet      one row each; pandas.read_parquet(out) reads them all
    _warmstart/<trial_id>/config.yaml the frozen config that made the rows
    _warmstart/<trial_id>/checkpoint.pt  what the next round needs to continue
    _warmstart/<trial_id>/status.json    the last completed round and the number of rounds
    _warmstart/<trial_id>/progress.json  the round and epoch in progress, for whoever reports

pyarrow's dataset discovery skips names that start with ``_`` or ``.``, so the
metadata and half-written temporary files are never read as results.  A row is
written to a temporary name and renamed into place (a single PUT on object stores),
so an interrupted run never leaves a partial file; the file name is fixed by
(trial, round), so re-running a round replaces its row instead of duplicating it.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from engine.records import arrow_schema, record_fields

# The fixed columns (RoundRecord's own and pretrain_*); a written row also has the cfg.*
# columns of records.arrow_schema().  Both are defined in engine/records.py.
SCHEMA = pa.schema(record_fields())

META = "_warmstart"


def read_manifest(out: str) -> dict | None:
    """The suite recorded under ``out`` (name, trial ids, suite file), if any."""
    fs, base = filesystem(out)
    try:
        with fs.open_input_stream(f"{base}/{META}/suite.yaml") as f:
            return yaml.safe_load(f.read())
    except FileNotFoundError:
        return None


def write_manifest(out: str, manifest: dict) -> None:
    fs, base = filesystem(out)
    fs.create_dir(f"{base}/{META}", recursive=True)
    with fs.open_output_stream(f"{base}/{META}/suite.yaml") as f:
        f.write(yaml.safe_dump(manifest, sort_keys=False).encode())


def has_rows(out: str) -> bool:
    """Whether ``out`` holds any results file."""
    fs, base = filesystem(out)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    except FileNotFoundError:
        return False
    return any(info.path.endswith(".parquet") for info in infos)


def filesystem(out: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path for a local path or a URI."""
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(out))


class TrialStore:
    """Rows and checkpoints of one trial under ``out``."""

    def __init__(self, out: str, trial_id: str) -> None:
        self.fs, self.base = filesystem(out)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.trial_id = trial_id
        self.meta = f"{self.base}/{META}/{trial_id}"

    def _put(self, path: str, payload: bytes) -> None:
        """Write ``payload`` to ``path`` so that readers see all of it or nothing."""
        self.fs.create_dir(os.path.dirname(path), recursive=True)
        if not self.local:
            with self.fs.open_output_stream(path) as f:  # one PUT: atomic on object stores
                f.write(payload)
            return
        tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _get(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    # --- config ---------------------------------------------------------------------

    def saved_config(self) -> dict | None:
        raw = self._get(f"{self.meta}/config.yaml")
        return yaml.safe_load(raw) if raw is not None else None

    def save_config(self, config_yaml: str) -> None:
        self._put(f"{self.meta}/config.yaml", config_yaml.encode())

    # --- status: the last completed round, for drivers that decide what is left to run ---

    def save_status(self, status: dict) -> None:
        self._put(f"{self.meta}/status.json", json.dumps(status).encode())

    def load_status(self) -> dict | None:
        raw = self._get(f"{self.meta}/status.json")
        return json.loads(raw) if raw is not None else None

    # --- live progress (written by the process that trains, read by the one that reports) ---

    def save_progress(self, progress: dict) -> None:
        self._put(f"{self.meta}/progress.json", json.dumps(progress).encode())

    def load_progress(self) -> dict | None:
        raw = self._get(f"{self.meta}/progress.json")
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError:
            return None

    # --- rows -----------------------------------------------------------------------

    def row_path(self, round_: int) -> str:
        return f"{self.base}/{self.trial_id}-round{round_:04d}.parquet"

    def write_row(self, row: dict) -> None:
        table = pa.Table.from_pylist([row], schema=arrow_schema())
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self._put(self.row_path(row["round"]), sink.getvalue())

    def rows(self) -> list[dict]:
        """This trial's rows, in round order."""
        selector = pafs.FileSelector(self.base)
        names = sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if os.path.basename(info.path).startswith(f"{self.trial_id}-round") and info.path.endswith(".parquet")
        )
        rows = []
        for path in names:
            with self.fs.open_input_file(path) as f:
                rows += pq.read_table(f).to_pylist()
        return rows

    # --- checkpoint -----------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        import torch  # here, not at the top: reading results should not need torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._put(f"{self.meta}/checkpoint.pt", buffer.getvalue())

    def load_checkpoint(self) -> dict | None:
        raw = self._get(f"{self.meta}/checkpoint.pt")
        if raw is None:
            return None
        import torch

        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
