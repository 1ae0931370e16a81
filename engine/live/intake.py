"""The label files that arrive in a live project, read and checked before anything trains.

A label file is any file directly in ``DIR/labels/`` (names starting with ``.`` or ``_`` are
skipped: write under such a name, then rename, so that a step never reads half a file): a
Parquet (``.parquet``, ``.pq``) or CSV (``.csv``) table with the columns ``id`` and ``label``.
Each is consumed exactly once: the round that takes it lists it in its row's ``label_files``
column as ``labels/NAME#SHA256`` (written atomically with the row), and a copy of it goes to
``_live/consumed/SHA256`` before the round trains, so later steps (and a recomputation from
round 1) read the labels from the copy even when the original is moved away.  A file whose
name was consumed and whose content changed since is refused: new labels go in a new file.

Online mode: a batch file in ``DIR/batches/`` holds new samples with their labels (``id``,
``label`` and the project's feature columns); each batch is a round of its own, its samples
appended to the pool after the batches before it.  It is consumed, copied and listed
(``batches/NAME#SHA256``) as a label file is.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.errors import ConfigError
from engine.live.project import BATCHES, ID, LABEL, LABELS, LIVE, Project, key

TABLES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class LabelFile:
    """One label file: its name under the project, its content's hash and its labels."""

    name: str  # "labels/NAME" or "batches/NAME"
    sha256: str
    labels: dict[int, int]  # pool position -> class index
    inputs: np.ndarray | None = None  # a batch's samples [n, ...] (positions: after the pool and earlier batches)

    @property
    def batch(self) -> bool:
        return self.inputs is not None

    @property
    def entry(self) -> str:
        """How a row's ``label_files`` names it."""
        return f"{self.name}#{self.sha256}"


def parse_entry(entry: str) -> tuple[str, str]:
    name, _, digest = entry.rpartition("#")
    return name, digest


@dataclass
class Known:
    """The labels known so far: pool position -> (class index, the file that gave it)."""

    project: Project
    positions: dict[str, int]  # id text -> pool position
    classes: dict[str, int]  # label text -> class index
    labels: dict[int, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, project: Project) -> Known:
        positions = {key(v): i for i, v in enumerate(project.pool_ids())}
        return cls(project, positions, project.class_index())

    def extend(self, ids: list) -> None:
        """A batch's ids, at the positions after the pool and the batches before it."""
        for identifier in ids:
            self.positions[key(identifier)] = len(self.positions)

    def add(self, file: LabelFile) -> None:
        """The file's labels, known from now on."""
        for position, label in file.labels.items():
            self.labels.setdefault(position, (label, file.name))


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def arrived(project: Project, folder: str = LABELS) -> list[tuple[str, bytes]]:
    """(``labels/NAME``, content) of every file in the folder (``labels`` or ``batches``), by name."""
    found = []
    for name in project.files(folder):
        payload = project.read(folder, name)
        if payload is not None:  # gone since the listing: not arrived after all
            found.append((f"{folder}/{name}", payload))
    return found


def pending(project: Project, consumed: dict[str, str], known: Known) -> list[LabelFile]:
    """The batch files, then the label files, not consumed yet, read and checked against
    ``known`` (the labels of the consumed ones) and each other, by name; a problem is a
    ConfigError naming the file."""
    out = []
    for name, payload in arrived(project, BATCHES) + arrived(project, LABELS):
        digest = _digest(payload)
        if name in consumed:
            if consumed[name] != digest:
                raise ConfigError(
                    f"{project.path(name)} changed after a round consumed it (sha256 {consumed[name][:12]}… then, "
                    f"{digest[:12]}… now); restore it (a copy is {project.path(LIVE, 'consumed', consumed[name])}) "
                    "and put new labels in a new file."
                )
            continue
        out.append(read(project, name, payload, known))
    return out


def consumed_file(project: Project, entry: str, known: Known) -> LabelFile:
    """A file a saved round consumed, from its copy (else the original, if unchanged)."""
    name, digest = parse_entry(entry)
    for where in ((LIVE, "consumed", digest), (name,)):
        payload = project.read(*where)
        if payload is not None and _digest(payload) == digest:
            return read(project, name, payload, known)
    raise ConfigError(
        f"The labels a saved round consumed, {project.path(name)} (sha256 {digest[:12]}…), are gone: neither the "
        f"file nor its copy under {project.path(LIVE, 'consumed')} holds them; restore one."
    )


def keep_copy(project: Project, file: LabelFile, payload: bytes | None = None) -> None:
    """The consumed copy of ``file`` (before the round that consumes it trains)."""
    if project.exists(LIVE, "consumed", file.sha256):
        return
    payload = payload if payload is not None else project.read(file.name)
    if payload is None or _digest(payload) != file.sha256:
        raise ConfigError(f"The label file {project.path(file.name)} changed or went away while a step read it.")
    project.write(LIVE, "consumed", file.sha256, payload=payload)


def read(project: Project, name: str, payload: bytes, known: Known) -> LabelFile:
    """A label file's labels as {pool position: class index}, checked: a table with ``id``
    and ``label``, every id in the pool, every label one of the evaluation set's classes, no
    id labelled twice with different labels (in the file, or by an earlier file); a batch's
    samples too.  Added to ``known``."""
    where = project.path(name)
    frame = _table(where, payload)
    frame.columns = [str(c) for c in frame.columns]
    inputs, ids = None, None
    if name.startswith(f"{BATCHES}/"):
        inputs, ids = _batch(project, where, frame, known)
    missing = [c for c in (ID, LABEL) if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"The label file {where} has no {' or '.join(map(repr, missing))} column "
            f"(it has {', '.join(map(repr, frame.columns)) or 'none'}); a label file has the columns id and label."
        )
    if len(frame) == 0:
        raise ConfigError(f"The label file {where} has no rows.")
    labels: dict[int, int] = {}
    for row, (identifier, label) in enumerate(zip(frame[ID].tolist(), frame[LABEL].tolist(), strict=True)):
        if _missing(identifier) or _missing(label):
            raise ConfigError(f"The label file {where} has an empty id or label in row {row + 1}.")
        position = known.positions.get(key(identifier))
        if position is None:
            raise ConfigError(
                f"The label file {where} labels the id {identifier!r} (row {row + 1}), which is not in the pool."
            )
        label_index = known.classes.get(key(label))
        if label_index is None:
            shown = ", ".join(map(str, project.classes[:12])) + (", …" if len(project.classes) > 12 else "")
            raise ConfigError(
                f"The label file {where} gives the id {identifier!r} the label {label!r} (row {row + 1}), which is "
                f"not one of the evaluation set's classes ({shown})."
            )
        before = labels.get(position)
        if before is not None and before != label_index:
            raise ConfigError(
                f"The label file {where} labels the id {identifier!r} twice, as {project.classes[before]!r} and "
                f"{project.classes[label_index]!r}."
            )
        earlier = known.labels.get(position)
        if earlier is not None and earlier[0] != label_index:
            raise ConfigError(
                f"The label file {where} labels the id {identifier!r} as {project.classes[label_index]!r}, but "
                f"{project.path(earlier[1])} "
                f"labelled it {project.classes[earlier[0]]!r}."
            )
        labels[position] = label_index
    file = LabelFile(name, _digest(payload), labels, inputs)
    known.add(file)
    return file


def _batch(project: Project, where: str, frame: pd.DataFrame, known: Known) -> tuple[np.ndarray, list]:
    """A batch's inputs [n, ...] (float32, as the pool's features) and ids, which join ``known``
    (new ids only: a batch brings new samples)."""
    missing = [c for c in (ID, LABEL, *project.features) if c not in frame.columns]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (", …" if len(missing) > 5 else "")
        raise ConfigError(
            f"The batch file {where} lacks the column(s) {shown}; a batch has id, label and the pool's features."
        )
    ids = frame[ID].tolist()
    seen = set()
    for row, identifier in enumerate(ids):
        text = key(identifier)
        if text in known.positions or text in seen:
            raise ConfigError(
                f"The batch file {where} brings the id {identifier!r} (row {row + 1}), which is taken: batch ids are new."
            )
        seen.add(text)
    try:
        x = np.array(frame[list(project.features)], dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"The batch file {where} has a feature that is not a number.") from None
    if not np.isfinite(x).all():
        raise ConfigError(f"The batch file {where} has NaN or infinite features.")
    if project.shape is not None:
        x = x.reshape(len(frame), *project.shape)
    known.extend(ids)
    return x, ids


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value)


def _table(where: str, payload: bytes) -> pd.DataFrame:
    kind = TABLES.get(os.path.splitext(where)[1].lower())
    if kind is None:
        raise ConfigError(
            f"The label file {where} is not a table: name it .parquet or .csv (or start its name with '.' or '_' "
            "to keep it out of the labels)."
        )
    try:
        if kind == "parquet":
            return pd.read_parquet(io.BytesIO(payload))
        # Text as written: ids "007" and labels "3" are compared as the text they are.
        return pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=False)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"The label file {where} is not a {kind} table ({type(exc).__name__}: {reason}).") from None
