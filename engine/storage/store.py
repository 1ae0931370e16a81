"""The results store: one Parquet file per (trial, round), and each trial's checkpoint beside them.

Layout under ``--out`` (a local path or a URI pyarrow understands, e.g. ``s3://bucket/x``):

    <trial_id>-round0001.parquet      one row each; pandas.read_parquet(out) reads them all
    _warmstart/<trial_id>/config.yaml the frozen config that made the rows
    _warmstart/<trial_id>/checkpoint-NNNN.pt  what the next round needs to continue (two generations)
    _warmstart/<trial_id>/status.json    the last completed round and the number of rounds

pyarrow's dataset discovery skips names that start with ``_`` or ``.``, so the
metadata and half-written temporary files are never read as results (and a trial id may
not start with them, nor take a name of this layout: engine.schema.config.RESERVED_TRIAL_IDS).
Where ``out`` may be, and what is its own, is engine/storage/uri.py's and folders.py's.  A row is
written to a temporary name and renamed into place (on an object store, which has no
rename, as one upload that appears whole when it completes), so an interrupted run
never leaves a partial file; the file name is fixed by (trial, round), so re-running a
round replaces its row instead of duplicating it.  On an object store a trial's lease
(``_warmstart/<trial>/owner.json``) stands in for the lock: see ``TrialStore.lock``.
An object store's filesystem, endpoint and credentials included, comes from
engine/storage/object_store.py.
"""

from __future__ import annotations

import atexit
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
from engine.storage.metadata import seal, unseal
from engine.storage.object_store import object_store, object_store_reason, reach
from engine.storage.uri import normalise

# The fixed columns (RoundRecord's own and pretrain_*); a written row also has the cfg.*
# columns of records.arrow_schema().  Both are defined in engine/schema/records.py.
SCHEMA = pa.schema(record_fields())

META = "_warmstart"
CONFIG_REMEDY = (
    "restore it from a copy, or delete it: the next run writes it again and its rows must reproduce "
    "(docs/guarantees.md#determinism)"
)

EPOCHS = "_epochs"  # the per-epoch table (eval.epochs_table): its own dataset, skipped by a read of the rows


EPOCH_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("round", pa.int64()),
        ("epoch", pa.int64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("seconds", pa.float64()),
    ]
)


def put(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see all of it or nothing; on any failure
    nothing is left behind (no partial file, no temporary file).  One upload on an object
    store; a temporary file, fsync and rename on a local disk."""
    if not isinstance(fs, pafs.LocalFileSystem):
        # An object store has no folders to create and no rename: the object appears when
        # its stream closes, whole (one PutObject for small payloads; a multipart upload,
        # which is invisible until completed, for large ones).  Checkpoints also carry a
        # checksum, so even a damaged one is never trusted.
        try:
            with fs.open_output_stream(path) as f:
                f.write(payload)
        except OSError as exc:
            raise StoreError(f"Cannot write {path}: {_os_reason(exc)}.") from None
        return
    try:
        fs.create_dir(os.path.dirname(path), recursive=True)
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
    """The suite recorded under ``out`` (name, trial ids, suite file), if any; a damaged one
    is a ConfigError naming it (engine/storage/metadata.py)."""
    raw = read_meta(out, "suite.yaml")
    if raw is None:
        return None
    name = f"{out.rstrip('/')}/{META}/suite.yaml"
    manifest = unseal(raw, name, "suite manifest", "restore it from a copy, or choose another --out")
    base = manifest.get("base", {})
    if (
        not isinstance(manifest.get("name"), str)
        or not isinstance(manifest.get("trials"), list)
        or not isinstance(base, dict)
    ):
        raise ConfigError(
            f"The suite manifest {name} is damaged (it lacks the suite's name or trials); restore it from a copy, "
            "or choose another --out."
        )
    return manifest


def write_manifest(out: str, manifest: dict) -> None:
    write_meta(out, "suite.yaml", seal(yaml.safe_dump(manifest, sort_keys=False)))


def has_rows(out: str) -> bool:
    """Whether ``out`` holds any results file."""
    fs, base = filesystem(out)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    except FileNotFoundError:
        return False
    return any(info.path.endswith(".parquet") for info in infos)


def filesystem(out: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path for a local path or a URI (``uri.normalise``d:
    one refused there is refused here too).  An object store's filesystem is the one this
    process was given (``adopt_filesystem``), else the one its own environment describes
    (``object_store``)."""
    out = normalise(out)
    if "://" not in out:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(out))
    return object_store(out), out.partition("://")[2].rstrip("/")


def ray_storage(out: str, folder: str) -> dict:
    """A Tune or Ray Train ``RunConfig``'s storage for Ray's own state under
    ``out/_warmstart/<folder>``: on an object store, with its filesystem given explicitly."""
    fs, base = filesystem(out)
    if "://" not in out:
        return {"storage_path": f"{base}/{META}/{folder}"}
    return {"storage_path": f"{base}/{META}/{folder}", "storage_filesystem": fs}


class StoreError(TrialError):
    """The results store cannot be written or read (disk full, read-only, not a folder…).
    One line for the user; whatever was half-written is gone."""


def _os_reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


CHECKPOINT_MAGIC = b"WSCKPT1 "  # then the payload's sha256 in hex, a newline, the payload
KEEP_GENERATIONS = 2  # checkpoints kept: the newest, and one to fall back on
LEASE = "owner.json"  # on an object store: which run holds a trial (see TrialStore.lock)


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
        self.lease: str | None = None  # this run's token in the object store's owner.json
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
        if not self.local:
            return self._probe_object_store()
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

    def _probe_object_store(self) -> None:
        """Write and delete a probe object: an endpoint that does not answer, a missing
        bucket, wrong credentials or no write permission are one line each."""
        probe = f"{self.base}/{META}/.probe-{uuid.uuid4().hex}"
        try:
            reach(self.out)  # an endpoint that does not answer: named in seconds, not after every retry
            with self.fs.open_output_stream(probe) as f:
                f.write(b"warmstart write probe")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise ConfigError(
                f"Cannot write results to {self.out}: {object_store_reason(exc, self.out)}; "
                "check the bucket and the AWS_* variables, or choose another --out."
            ) from None

    # --- one process per trial -----------------------------------------------------------

    def lock(self) -> None:
        """Hold this trial so that a second process running it does not interleave its rounds.

        On a local or shared disk: an OS lock (``_warmstart/<trial>/lock``: pid, host and
        start time); a second process stops at once, and a dead holder's lock is released by
        the operating system, never stale.  On an object store, which has no lock: a lease
        (``_warmstart/<trial>/owner.json`` with a token unique to this run).  The newest run
        takes it (a trial retried after its node was lost must be able to), and every commit
        of a row, checkpoint or status first reads it back: a run whose lease was taken over
        stops before its next commit, in one line naming the new holder."""
        if self._lock_fd is not None or self.lease is not None:
            return
        path = f"{self.meta}/lock"
        holder = _HELD.get(path)
        if holder is not None and holder is not self:
            # The same process opens the trial again (a notebook cell run twice): the newer
            # store takes the lock over, and the older one may no longer write.
            self._lock_fd, holder._lock_fd = holder._lock_fd, None
            self.lease, holder.lease = holder.lease, None
            holder.superseded = True
            _HELD[path] = self
            return
        if not self.local:
            token = uuid.uuid4().hex
            put(self.fs, f"{self.meta}/{LEASE}", json.dumps({**_whoami(), "token": token}).encode())
            self.lease = token
            _HELD[path] = self
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
        os.write(fd, json.dumps(_whoami()).encode())
        self._lock_fd = fd
        _HELD[path] = self

    def lease_holder(self) -> str | None:
        """The lease on an object store, as its holder wrote it (pid, host, since), if any."""
        raw = None if self.local else self._get(f"{self.meta}/{LEASE}")
        return raw.decode(errors="replace") if raw is not None else None

    def follow_lease(self, token: str | None) -> None:
        """Commit under a lease another process took (a Ray Train worker under its driver's)."""
        self.lease = token

    def _check_lease(self, what: str) -> None:
        """Before a commit on an object store: stop when another run took this trial over."""
        if self.lease is None:
            return
        raw = self._get(f"{self.meta}/{LEASE}")
        try:
            holder = json.loads(raw) if raw is not None else {}
        except ValueError:
            holder = {}
        if holder.get("token") != self.lease:
            who = _holder(raw.decode(errors="replace")) if raw is not None else "another run, which has ended"
            raise TrialBusy(
                f"Trial {self.trial_id} on {self.out} was taken over by {who}; this run stopped before writing "
                f"{what}, so the two do not interleave."
            )

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            _HELD.pop(f"{self.meta}/lock", None)
        if self.lease is not None and _HELD.get(f"{self.meta}/lock") is self:
            with contextlib.suppress(TrialBusy, OSError):
                self._check_lease("its release")  # a lease another run took over stays theirs
                self.fs.delete_file(f"{self.meta}/{LEASE}")
            self.lease = None
            _HELD.pop(f"{self.meta}/lock", None)

    # --- config ---------------------------------------------------------------------

    def saved_config(self) -> dict | None:
        """The trial's frozen config, if any; a damaged one is a ConfigError naming it."""
        raw = self._get(f"{self.meta}/config.yaml")
        if raw is None:
            return None
        return unseal(raw, self.config_name(), "saved config", CONFIG_REMEDY)

    def config_name(self) -> str:
        """The saved config's path or URI, for the user."""
        return f"{self.out.rstrip('/')}/{META}/{self.trial_id}/config.yaml"

    def save_config(self, config_yaml: str) -> None:
        self._put(f"{self.meta}/config.yaml", seal(config_yaml))

    # --- status: the last completed round, for drivers that decide what is left to run ---

    def save_status(self, status: dict) -> None:
        self._check_lease(f"the status of round {status['round']}")
        self._put(f"{self.meta}/status.json", json.dumps(status).encode())

    def load_status(self) -> dict | None:
        """The status, or None (none written, or damaged: the rows and checkpoint decide)."""
        return self.read_status()[0]

    def read_status(self) -> tuple[dict | None, str | None]:
        """The status (or None), and why a ``status.json`` that is there is not one (None when
        it is, or when there is none)."""
        raw = self._get(f"{self.meta}/status.json")
        if raw is None:
            return None, None
        try:
            status = json.loads(raw)
        except ValueError:
            return None, "is not JSON (truncated or damaged)"
        said = status.get("round") if isinstance(status, dict) else None
        if type(said) is not int or said < 0:  # bool is an int to isinstance
            return None, "holds no round number"
        return status, None

    # --- rows -----------------------------------------------------------------------

    def row_path(self, round_: int) -> str:
        return f"{self.base}/{self.trial_id}-round{round_:04d}.parquet"

    def write_epochs(self, round_: int, epochs: list[dict]) -> None:
        """One round's per-epoch rows (``eval.epochs_table``) under ``out/_epochs/``, a dataset of
        its own: ``pd.read_parquet(out)`` skips it, ``pd.read_parquet(f"{out}/_epochs")`` reads it."""
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(epochs, schema=EPOCH_SCHEMA), sink)
        self._put(f"{self.base}/{EPOCHS}/{self.trial_id}-round{round_:04d}.parquet", sink.getvalue())

    def write_row(self, row: dict) -> None:
        table = pa.Table.from_pylist([row], schema=arrow_schema())
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self._check_lease(f"round {row['round']}")
        self._put(self.row_path(row["round"]), sink.getvalue())

    def _row_files(self) -> dict[int, str]:
        prefix = f"{self.trial_id}-round"
        files = {}
        for path in self._names(self.base):
            name = os.path.basename(path)
            if name.startswith(prefix) and name.endswith(".parquet") and name[len(prefix) : -8].isdigit():
                files[int(name[len(prefix) : -8])] = path
        return files

    def read_rows(self) -> tuple[dict[int, dict], dict[int, str]]:
        """This trial's rows by round, and the rounds whose files cannot be trusted, with why:
        unreadable (truncated, not Parquet, zero or two rows), or holding another (trial,
        round) than the file's name fixes.  Either way the round must be recomputed."""
        rows, bad = {}, {}
        for round_, path in sorted(self._row_files().items()):
            try:
                with self.fs.open_input_file(path) as f:
                    (row,) = pq.read_table(f).to_pylist()
            except Exception:
                bad[round_] = "cannot be read"
                continue
            if row.get("trial_id") != self.trial_id or row.get("round") != round_:
                bad[round_] = f"holds trial {row.get('trial_id')!r} round {row.get('round')!r}"
            else:
                rows[round_] = row
        return rows, bad

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
        self._check_lease(f"the checkpoint of round {state['round']}")
        self._put(f"{self.meta}/checkpoint-{state['round']:04d}.pt", CHECKPOINT_MAGIC + digest + b"\n" + payload)
        for old in self._checkpoints()[KEEP_GENERATIONS:]:  # newest first
            with contextlib.suppress(OSError):
                self.fs.delete_file(old)

    def _checkpoints(self) -> list[str]:
        """Checkpoint files, newest round first."""
        names = {os.path.basename(p): p for p in self._names(self.meta)}
        generations = sorted((n for n in names if n.startswith("checkpoint-") and n.endswith(".pt")), reverse=True)
        return [names[n] for n in generations]

    def load_checkpoint(self) -> dict | None:
        """The newest checkpoint whose checksum holds; a corrupt one is noted and passed over
        for the previous generation.  None when there is none (or none intact)."""
        import torch

        for path in self._checkpoints():
            raw = self._get(path)
            name = os.path.basename(path)
            try:
                if not raw.startswith(CHECKPOINT_MAGIC):
                    raise ValueError("no checksum header")
                digest, _, payload = raw[len(CHECKPOINT_MAGIC) :].partition(b"\n")
                if hashlib.sha256(payload).hexdigest().encode() != digest:
                    raise ValueError("checksum mismatch")
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


@atexit.register
def _release_at_exit() -> None:
    """Locks and leases still held when the interpreter exits (a ``ws.Trial`` left open) are
    released here: registered after pyarrow.fs's own exit handler, this runs before it
    finalises S3, so a lease can still be deleted."""
    for store in list(_HELD.values()):
        with contextlib.suppress(Exception):
            store.unlock()


class TrialBusy(TrialError):
    """Another process holds this trial's lock."""


def _whoami() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _holder(holder: str) -> str:
    """The lock holder, as a phrase: 'pid 123 on host h since 2026-11-27 10:00:00'."""
    try:
        record = json.loads(holder)
        return f"pid {record['pid']} on host {record['host']} (since {record['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
