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

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from engine.errors import ConfigError, TrialError
from engine.schema.records import arrow_schema, record_fields

# The fixed columns (RoundRecord's own and pretrain_*); a written row also has the cfg.*
# columns of records.arrow_schema().  Both are defined in engine/schema/records.py.
SCHEMA = pa.schema(record_fields())

META = "_warmstart"


def put(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see all of it or nothing; on any failure
    nothing is left behind (no partial file, no temporary file).  One PUT on an object
    store; a temporary file, fsync and rename on a local disk."""
    try:
        fs.create_dir(os.path.dirname(path), recursive=True)
        if not isinstance(fs, pafs.LocalFileSystem):
            with fs.open_output_stream(path) as f:  # one PUT: atomic on object stores
                f.write(payload)
            return
    except OSError as exc:
        raise StoreError(f"Cannot write {path}: {_os_reason(exc)}.") from None
    tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StoreError(f"Cannot write {path}: {_os_reason(exc)}.") from None
        raise


def read_meta(out: str, name: str) -> bytes | None:
    """A suite-level file under ``out/_warmstart/`` (the manifest, the search record), if any."""
    fs, base = filesystem(out)
    try:
        with fs.open_input_stream(f"{base}/{META}/{name}") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_meta(out: str, name: str, payload: bytes) -> None:
    fs, base = filesystem(out)
    put(fs, f"{base}/{META}/{name}", payload)


def read_manifest(out: str) -> dict | None:
    """The suite recorded under ``out`` (name, trial ids, suite file), if any."""
    raw = read_meta(out, "suite.yaml")
    return yaml.safe_load(raw) if raw is not None else None


def write_manifest(out: str, manifest: dict) -> None:
    write_meta(out, "suite.yaml", yaml.safe_dump(manifest, sort_keys=False).encode())


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


class StoreError(TrialError):
    """The results store cannot be written or read (disk full, read-only, not a folder…).
    One line for the user; whatever was half-written is gone."""


def _os_reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


CHECKPOINT_MAGIC = b"WSCKPT1 "  # then the payload's sha256 in hex, a newline, the payload
KEEP_GENERATIONS = 2  # checkpoints kept: the newest, and one to fall back on


_HELD: dict[str, TrialStore] = {}  # lock path -> the store of this process holding it


class TrialStore:
    """Rows, checkpoints, status and the lock of one trial under ``out``."""

    def __init__(self, out: str, trial_id: str) -> None:
        self.out = out
        self.fs, self.base = filesystem(out)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.trial_id = trial_id
        self.meta = f"{self.base}/{META}/{trial_id}"
        self._lock_fd: int | None = None
        self.superseded = False  # another store of this process took over the trial's lock
        self.notes: list[str] = []  # what was found and recovered from, for the user

    def _put(self, path: str, payload: bytes) -> None:
        """Write ``payload`` to ``path`` so that readers see all of it or nothing; on any
        failure nothing is left behind (no partial file, no temporary file)."""
        if self.superseded:
            raise TrialBusy(
                f"Trial {self.trial_id} was opened again in this process; this older handle on it no longer writes."
            )
        put(self.fs, path, payload)

    def _get(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _names(self, folder: str) -> list[str]:
        """File paths directly in ``folder``; none when it does not exist (yet)."""
        try:
            return [i.path for i in self.fs.get_file_info(pafs.FileSelector(folder)) if i.type == pafs.FileType.File]
        except FileNotFoundError:
            return []

    # --- writability, probed before any training ------------------------------------------

    def probe(self) -> None:
        """Make sure rows can be written under ``out``: a ConfigError (exit 2) up front
        when it is a file, read-only, full, or otherwise unwritable; nothing is left behind."""
        if self.local:
            if os.path.exists(self.base) and not os.path.isdir(self.base):
                raise ConfigError(f"The results path {self.out} is a file, not a folder; choose another --out.")
        probe = f"{self.base}/{META}/.probe-{uuid.uuid4().hex}"
        # Folders the probe creates are removed again: a refused run leaves nothing behind.
        created = [d for d in (f"{self.base}/{META}", self.base) if self.local and not os.path.exists(d)]
        try:
            self._put(probe, b"warmstart write probe")
            self.fs.delete_file(probe)
        except (StoreError, OSError) as exc:
            reason = str(exc).rsplit(": ", 1)[-1].rstrip(".") if isinstance(exc, StoreError) else _os_reason(exc)
            raise ConfigError(f"Cannot write results to {self.out}: {reason}; choose another --out.") from None
        finally:
            for folder in created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)

    # --- one process per trial -----------------------------------------------------------

    def lock(self) -> None:
        """Hold this trial's lock (``_warmstart/<trial>/lock``: pid, host and start time) so a
        second process running the same trial stops at once instead of doing the work twice.
        A lock whose process died is released by the operating system, never stale.  Object
        stores have no lock: a warning says so."""
        if self._lock_fd is not None:
            return
        path = f"{self.meta}/lock"
        holder = _HELD.get(path)
        if holder is not None and holder is not self:
            # The same process opens the trial again (a notebook cell run twice): the newer
            # store takes the lock over, and the older one may no longer write.
            self._lock_fd, holder._lock_fd, holder.superseded = holder._lock_fd, None, True
            _HELD[path] = self
            return
        if not self.local:
            self.notes.append(
                f"note: {self.out} is an object store, where warmstart cannot lock a trial: make sure "
                "one process at a time runs each trial there"
            )
            return
        os.makedirs(self.meta, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TrialBusy(
                f"Trial {self.trial_id} is already running in {_holder(holder)} on {self.out}; "
                "wait for it to finish (or stop it), then re-run to resume."
            ) from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, json.dumps(record).encode())
        self._lock_fd = fd
        _HELD[path] = self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            _HELD.pop(f"{self.meta}/lock", None)

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
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError:  # a damaged status says nothing: the rows and checkpoint decide
            return None

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

    def _row_files(self) -> dict[int, str]:
        prefix = f"{self.trial_id}-round"
        files = {}
        for path in self._names(self.base):
            name = os.path.basename(path)
            if name.startswith(prefix) and name.endswith(".parquet") and name[len(prefix) : -8].isdigit():
                files[int(name[len(prefix) : -8])] = path
        return files

    def read_rows(self) -> tuple[dict[int, dict], list[int]]:
        """This trial's readable rows by round, and the rounds whose files cannot be read."""
        rows, unreadable = {}, []
        for round_, path in sorted(self._row_files().items()):
            try:
                with self.fs.open_input_file(path) as f:
                    (row,) = pq.read_table(f).to_pylist()
                rows[round_] = row
            except Exception:  # truncated, not Parquet, zero or two rows: the round must be recomputed
                unreadable.append(round_)
        return rows, unreadable

    def rows(self) -> list[dict]:
        """This trial's readable rows, in round order (none when ``out`` does not exist yet)."""
        return list(self.read_rows()[0].values())

    # --- checkpoints: checksummed, two generations -------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        import torch  # here, not at the top: reading results should not need torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest().encode()
        self._put(f"{self.meta}/checkpoint-{state['round']:04d}.pt", CHECKPOINT_MAGIC + digest + b"\n" + payload)
        for old in self._checkpoints()[KEEP_GENERATIONS:]:  # newest first
            with contextlib.suppress(OSError):
                self.fs.delete_file(old)
        with contextlib.suppress(OSError, FileNotFoundError):  # the single file of older versions
            self.fs.delete_file(f"{self.meta}/checkpoint.pt")

    def _checkpoints(self) -> list[str]:
        """Checkpoint files, newest round first (an older version's checkpoint.pt last)."""
        names = {os.path.basename(p): p for p in self._names(self.meta)}
        generations = sorted((n for n in names if n.startswith("checkpoint-") and n.endswith(".pt")), reverse=True)
        return [names[n] for n in generations] + ([names["checkpoint.pt"]] if "checkpoint.pt" in names else [])

    def load_checkpoint(self) -> dict | None:
        """The newest checkpoint whose checksum holds; a corrupt one is noted and passed over
        for the previous generation.  None when there is none (or none intact)."""
        import torch

        for path in self._checkpoints():
            raw = self._get(path)
            name = os.path.basename(path)
            try:
                if raw.startswith(CHECKPOINT_MAGIC):
                    digest, _, payload = raw[len(CHECKPOINT_MAGIC) :].partition(b"\n")
                    if hashlib.sha256(payload).hexdigest().encode() != digest:
                        raise ValueError("checksum mismatch")
                else:  # written before checksums: torch's own format
                    payload = raw
                return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.notes.append(
                    f"note: checkpoint {name} of trial {self.trial_id} is corrupt ({reason[:120]}); passed over"
                )
        return None

    def clear_checkpoints(self) -> None:
        for path in self._checkpoints():
            with contextlib.suppress(OSError):
                self.fs.delete_file(path)


class TrialBusy(TrialError):
    """Another process holds this trial's lock."""


def _holder(holder: str) -> str:
    """The lock holder, as a phrase: 'pid 123 on host h since 2026-11-27 10:00:00'."""
    try:
        record = json.loads(holder)
        return f"pid {record['pid']} on host {record['host']} (since {record['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
