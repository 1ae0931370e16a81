"""A results folder's boundary: one run's or suite's results never contain another's.

A folder is a *results folder* when it has a ``_warmstart/`` child (``store.META``: every run
and suite writes its metadata there before its first row).  Its rows are the ``*.parquet``
files directly in it; every reader (``results.load``, ``warmstart report``, ``warmstart
check``, resume) takes those and nothing below.  But ``pandas.read_parquet(out)`` and
pyarrow read a folder recursively, so a results folder inside another would mix the two
tables: ``check_boundary`` refuses, before anything starts, an ``--out`` that lies inside a
results folder or holds one.

What it costs: one look for a marker per folder above ``out`` (on an object store a HEAD and
a one-key listing each, as deep as the key); and, only while ``out`` is not yet a results
folder, a walk of its subfolders (a delimited listing each, not of ``_``/``.`` folders, which
no reader enters), at most ``MAX_FOLDERS`` of them.  Once ``out`` has its marker, a results
folder made inside it later is refused by the first look, so the walk is never needed again.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.errors import ConfigError
from engine.storage.object_store import object_store_reason, reach
from engine.storage.store import META, TrialStore, filesystem, read_manifest
from engine.storage.uri import is_local, normalise

MAX_FOLDERS = 200  # subfolders a new results folder's walk may list before it gives up


def check_results_folder(out: str, name: str, trial: bool = False) -> str:
    """Everything to check of an ``--out`` before anything starts: its form (``uri.normalise``:
    the normalised location is returned), its boundary (``check_boundary``, which only reads)
    and that it can be written (``TrialStore.probe``, for the trial or suite ``name``).  Nothing
    is left behind.  A store that cannot be read is the probe's to word, as for a write.
    ``trial``: ``name`` is a trial id, refused in a suite's folder unless one of its trials
    (the suite's summary and report would count it with its own, as a suite refuses a folder
    that holds results not its own)."""
    out = normalise(out)
    try:
        reach(out)  # a store that does not answer fails in seconds here, not after every retry of a listing
        _check_boundary(out)
    except OSError:
        TrialStore(out, name).probe()  # the store's own problem (no endpoint, no bucket, no keys), in one line
        check_boundary(out)  # the probe got through: ask again
    TrialStore(out, name).probe()
    manifest = read_manifest(out) if trial else None
    if manifest is not None and name not in manifest["trials"]:
        raise ConfigError(
            f"{out} holds suite {manifest['name']!r}, and trial {name!r} is not one of its trials (its summary and "
            "report would count it with the suite's); choose another --out."
        )
    return out


def check_boundary(out: str) -> None:
    """Refuse (ConfigError, one line naming the other folder) an ``out`` inside another
    results folder or holding one."""
    out = normalise(out)
    try:
        _check_boundary(out)
    except OSError as exc:
        raise ConfigError(f"Cannot read {out} to check its boundary: {object_store_reason(exc, out)}.") from None


def _check_boundary(out: str) -> None:
    fs, base = filesystem(out)
    local = is_local(out)
    above = _ancestors(base, local)
    if local:
        # A symbolic link hides neither the folder it points into (the real path's ancestors)
        # nor the results folder it sits in (the path's own: pandas.read_parquet follows links).
        base = os.path.realpath(base)
        above = list(dict.fromkeys([*_ancestors(base, local), *above]))
    scheme = "" if local else out.split("://")[0] + "://"
    outer = next((a for a in above if _is_results_folder(fs, a)), None)
    if outer is not None:
        raise ConfigError(
            f"The results folder {out} would lie inside the results folder {scheme}{outer}, whose readers "
            "(pandas.read_parquet reads folders recursively) would mix the two; choose an --out outside it."
        )
    if _is_results_folder(fs, base):
        return
    inner = _nested_results_folder(fs, base)
    if inner is _TOO_MANY:
        raise ConfigError(
            f"The results folder {out} would hold more than {MAX_FOLDERS} folders that readers enter (pandas."
            "read_parquet reads folders recursively); choose a new or empty folder for --out."
        )
    if inner is not None:
        raise ConfigError(
            f"The results folder {out} would hold the results folder {scheme}{inner}, and readers (pandas."
            "read_parquet reads folders recursively) would mix the two; choose an --out that holds no results."
        )


_TOO_MANY = "too many"


def enclosing_results_folder(location: str) -> str | None:
    """The results folder that ``location`` is, or lies inside (nearest first), as a location
    (``s3://…`` or a local path); None when there is none.  What a folder of other files (a
    report) must not be written into, unless under a name readers skip."""
    location = normalise(location)
    fs, base = filesystem(location)
    local = is_local(location)
    candidates = [base, *_ancestors(base, local)]
    if local:
        real = os.path.realpath(base)
        candidates = list(dict.fromkeys([real, *_ancestors(real, local), *candidates]))
    found = next((c for c in candidates if _is_results_folder(fs, c)), None)
    if found is None or local:
        return found
    return location.split("://")[0] + "://" + found


def _ancestors(base: str, local: bool) -> list[str]:
    """The folders above ``base``, nearest first (an object store's: up to its bucket)."""
    parts = base.rstrip("/").split("/")
    if local:  # "/a/b" -> ["/a", "/"]
        return ["/".join(parts[:i]) or "/" for i in range(len(parts) - 1, 0, -1)]
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]  # "b/x/y" -> ["b/x", "b"]


def _is_results_folder(fs: pafs.FileSystem, folder: str) -> bool:
    marker = f"{folder.rstrip('/')}/{META}"
    return fs.get_file_info(marker).type == pafs.FileType.Directory


def _nested_results_folder(fs: pafs.FileSystem, base: str):
    """The first results folder below ``base`` (not through ``_``/``.`` folders), None, or
    ``_TOO_MANY`` when more than MAX_FOLDERS folders would have to be listed.  Breadth
    first: one delimited listing per folder tells both its marker and its subfolders."""
    pending, listed = [base], 0
    while pending:
        folder = pending.pop(0)
        listed += 1
        if listed > MAX_FOLDERS:
            return _TOO_MANY
        try:
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            if folder == base or not isinstance(fs, pafs.LocalFileSystem):
                raise
            continue  # a local subfolder this user cannot read: no reader of theirs reads it either
        names = [os.path.basename(i.path.rstrip("/")) for i in infos if i.type == pafs.FileType.Directory]
        if folder != base and META in names:
            return folder
        pending += [f"{folder.rstrip('/')}/{n}" for n in names if not n.startswith(("_", "."))]
    return None


# --- which rows are a folder's own --------------------------------------------------------

ROW_NAME = re.compile(r"(?P<trial>.+)-round(?P<round>[0-9]{4,})\.parquet")


def row_files(out: str) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and row files of the results folder ``out``: the ``*.parquet`` files
    directly in it whose names do not start with ``_`` or ``.`` (what pyarrow skips), never a
    subfolder's.  ``out`` may also name one Parquet file.  FileNotFoundError when it does
    not exist."""
    fs, base = filesystem(out)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base))
    except NotADirectoryError:  # a local file
        return fs, [base]
    except FileNotFoundError:  # no such folder, or, on an object store, a key that is one object
        if fs.get_file_info(base).type != pafs.FileType.File:
            raise
        return fs, [base]
    names = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        and not os.path.basename(i.path).startswith(("_", "."))
    )
    return fs, names


def row_key(path: str) -> tuple[str, int] | None:
    """The (trial id, round) a row file's name fixes, or None for a name of another form."""
    match = ROW_NAME.fullmatch(os.path.basename(path))
    return (match["trial"], int(match["round"])) if match else None


def trial_rows_intact(out: str, last: dict[str, int], threads: int = 16) -> dict[str, bool]:
    """For each trial id in ``last`` (its status's last completed round): whether rounds 1 to
    that round each have a row file under ``out`` that holds that (trial, round).  One
    listing for all trials, then two columns of each row read, ``threads`` at a time (what a
    suite's resume checks before it skips a finished trial)."""
    try:
        fs, files = row_files(out)
    except FileNotFoundError:
        return dict.fromkeys(last, False)
    by_trial: dict[str, dict[int, str]] = {}
    for path in files:
        key = row_key(path)
        if key is not None:
            by_trial.setdefault(key[0], {})[key[1]] = path

    def holds(item: tuple[str, int, str]) -> bool:
        trial_id, round_, path = item
        try:
            with fs.open_input_file(path) as f:
                row = pq.read_table(f, columns=["trial_id", "round"]).to_pylist()
        except Exception:  # truncated, not Parquet, no such columns
            return False
        return row == [{"trial_id": trial_id, "round": round_}]

    wanted, result = [], {}
    for trial_id, rounds in last.items():
        paths = by_trial.get(trial_id, {})
        result[trial_id] = all(r in paths for r in range(1, rounds + 1))
        if result[trial_id]:
            wanted += [(trial_id, r, paths[r]) for r in range(1, rounds + 1)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for (trial_id, _, _), ok in zip(wanted, pool.map(holds, wanted), strict=True):
            result[trial_id] = result[trial_id] and ok
    return result
