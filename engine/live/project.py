"""A live project's folder: what ``live init`` makes, and the files a step writes for people.

    DIR/
      labels/                 label files an annotator drops: Parquet or CSV, columns id, label
      batches/                online mode: files of features, id and label, one round each
      queries/round-NNNN.parquet   the ids round NNNN asks labels for: id, rank, score
      model/model.pt, model.json   the latest round's model for serving, and what it needs
      <trial>-roundNNNN.parquet    the rows, as any trial's (engine/storage/store.py)
      _warmstart/<trial>/          its sealed config, checkpoints and status
      _live/                       the project: project.json, config.yaml, pool.parquet,
                                   eval.parquet, and a copy of every consumed label file

The pool and the evaluation set are the ``files`` dataset's Parquet format (docs/own-data.md)
with an ``id`` column in the pool and a ``label`` column in the evaluation set; they are read
by the same reader (``engine.compute.data.read_table``) and placed by the same
``split_and_place`` as a simulated trial's ``files`` dataset with ``dataset.eval: test``, so a
live project whose labels are the ground truth trains exactly what ``warmstart run`` trains.
Names under ``_`` are skipped by every reader of the rows.  ``DIR`` is a local folder or an
object store's URI (``s3://bucket/prefix``), as any ``--out``: every file goes through the
store's filesystem (engine/storage/store.py ``filesystem``, ``put``: whole or not at all).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from engine.compute.data import Data, RawDataset, RawSplit, input_statistics, read_table, split_and_place
from engine.compute.models import Classifier
from engine.errors import ConfigError
from engine.schema.config import Config, build
from engine.storage.folders import check_results_folder
from engine.storage.store import filesystem, put
from engine.storage.uri import is_local, normalise
from engine.trial.setup import plan_rounds

LIVE, LABELS, BATCHES, QUERIES, MODEL = "_live", "labels", "batches", "queries", "model"
ID, LABEL = "id", "label"
VERSION = 1


def key(value) -> str:
    """An id or a label as the text it is compared by: ``7``, ``7.0`` and ``"7"`` alike."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (np.integer, np.bool_)):
        value = value.item()
    return str(value)


def location(out) -> str:
    """A project's folder in its one form: an absolute local path, or a normalised URI."""
    out = normalise(out, "live project folder")
    return os.path.abspath(os.path.expanduser(out)) if is_local(out) else out


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class Project:
    """An opened live project: where it is and what ``live init`` fixed."""

    out: str  # the folder, absolute
    features: tuple[str, ...]  # the feature columns, in the pool's order
    classes: tuple  # the class labels, as the evaluation set writes them; index = class index
    shape: tuple[int, ...] | None  # one sample's shape (dataset.shape), None: flat features
    normalize: str  # dataset.normalize
    trial_id: str

    # --- files, through the store's filesystem (a local folder or an object store) ---

    def path(self, *parts: str) -> str:
        """A file's path or URI, as people read it."""
        return "/".join([self.out.rstrip("/"), *parts])

    @cached_property
    def _fs(self):
        return filesystem(self.out)

    def _key(self, *parts: str) -> str:
        return "/".join([self._fs[1], *parts])

    def read(self, *parts: str) -> bytes | None:
        """A file's content; None when it does not exist."""
        try:
            with self._fs[0].open_input_stream(self._key(*parts)) as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write(self, *parts: str, payload: bytes) -> str:
        """``payload`` as the file, whole or not at all; its path."""
        put(self._fs[0], self._key(*parts), payload)
        return self.path(*parts)

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._fs[0].get_file_info(self._key(*parts)).type == pafs.FileType.File

    def files(self, folder: str) -> list[str]:
        """The names of the files directly in ``folder``, by name; ``.`` and ``_`` names left out."""
        import pyarrow.fs as pafs

        try:
            infos = self._fs[0].get_file_info(pafs.FileSelector(self._key(folder), allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [os.path.basename(i.path) for i in infos if i.type == pafs.FileType.File]
        return sorted(n for n in names if not n.startswith((".", "_")))

    @classmethod
    def open(cls, out: str) -> Project:
        """The live project in ``out``, or a ConfigError saying it is none."""
        out = location(out)
        raw = cls(out, (), (), None, "", "").read(LIVE, "project.json")
        if raw is None:
            raise ConfigError(
                f"{out} is not a live project (no {LIVE}/project.json); make one with `warmstart live init`."
            )
        meta = json.loads(raw)
        shape = tuple(meta["shape"]) if meta["shape"] is not None else None
        return cls(out, tuple(meta["features"]), tuple(meta["classes"]), shape, meta["normalize"], meta["trial_id"])

    def config(self) -> Config:
        from engine.schema.config import parse_yaml

        return build(parse_yaml(self.read(LIVE, "config.yaml").decode(), self.path(LIVE, "config.yaml")))

    def completed(self) -> int:
        """The last completed round (0 before round 1), as the trial's status says."""
        from engine.storage.store import TrialStore

        return (TrialStore(self.out, self.trial_id).load_status() or {}).get("round", 0)

    def class_index(self) -> dict[str, int]:
        """Label text (``key``) -> class index."""
        return {key(c): i for i, c in enumerate(self.classes)}

    def pool_ids(self) -> np.ndarray:
        return pd.read_parquet(io.BytesIO(self.read(LIVE, "pool.parquet")), columns=[ID])[ID].to_numpy()

    def raw(self) -> RawDataset:
        """The pool (labels -1: none known yet) and the evaluation set, as arrays."""
        return self._raw(self.read(LIVE, "pool.parquet"), self.read(LIVE, "eval.parquet"))

    def _raw(self, pool: bytes, evaluation: bytes) -> RawDataset:
        shape = list(self.shape) if self.shape is not None else None
        pool_x, _ = read_table(io.BytesIO(pool), list(self.features), ID, shape)
        eval_x, labels = read_table(io.BytesIO(evaluation), list(self.features), LABEL, shape)
        index = self.class_index()
        eval_y = np.array([index[key(v)] for v in labels], dtype=np.int64)
        pool_y = np.full(pool_x.shape[0], -1, dtype=np.int64)
        return RawDataset(RawSplit(pool_x, pool_y), RawSplit(eval_x, eval_y), len(self.classes), self.normalize)

    def data(self, cfg: Config, device: torch.device, batches=()) -> Data:
        """The trial's tensors, placed as a simulated ``files`` trial's (``dataset.eval: test``);
        the ``batches`` (online mode: LabelFiles with inputs, in round order) after the pool,
        normalised with the pool's statistics."""
        raw = self.raw()
        data = split_and_place(raw, "test", cfg.dataset.holdout, 0, device)
        if not batches:
            return data
        statistics = input_statistics(raw.train.inputs, raw.normalize)
        xs, ys = [data.pool_x], [data.pool_y]
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(batch.inputs)).to(device=device, dtype=torch.float32)
            if statistics is not None:  # as split_and_place's place()
                m = torch.tensor(statistics[0], dtype=torch.float32, device=device)
                x = (x - m) / torch.tensor(statistics[1], dtype=torch.float32, device=device)
            xs.append(x)
            ys.append(torch.tensor(list(batch.labels.values()), dtype=data.pool_y.dtype, device=device))
        pool_x, pool_y = torch.cat(xs), torch.cat(ys)
        n = pool_x.shape[0]
        return Data(pool_x, pool_y, data.eval_x, data.eval_y, np.arange(n), data.num_classes)

    def statistics(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The normalisation's mean and std (the pool's, as a simulated trial's training split)."""
        raw = self.raw()
        return input_statistics(raw.train.inputs, raw.normalize)

    # --- the files a step writes for people ------------------------------------------------

    def query_path(self, round_: int) -> str:
        return self.path(QUERIES, f"round-{round_:04d}.parquet")

    def write_query(self, round_: int, ids: np.ndarray, scores: np.ndarray | None) -> str:
        """``queries/round-NNNN.parquet``: the ids round ``round_`` asks labels for, in rank order."""
        score = np.full(len(ids), np.nan) if scores is None else np.asarray(scores, dtype=np.float64)
        frame = pd.DataFrame({ID: ids, "rank": np.arange(1, len(ids) + 1, dtype=np.int64), "score": score})
        return self.write(QUERIES, f"round-{round_:04d}.parquet", payload=parquet_bytes(frame))

    def export(self, cfg: Config, model: Classifier, row: dict) -> str:
        """``model/model.pt`` (the state dict) and ``model/model.json`` (what serving needs)."""
        statistics = self.statistics()
        meta = {
            "format": "warmstart live model",
            "version": VERSION,
            "round": row["round"],
            "trial_id": row["trial_id"],
            "test_acc": row["test_acc"],
            "n_labeled": row["n_labeled"],
            "model": {"name": cfg.model.name, "params": cfg.model.params()},
            "plugins": list(cfg.plugins),
            "input_shape": list(self.shape) if self.shape is not None else [len(self.features)],
            "features": list(self.features),
            "classes": [c.item() if isinstance(c, np.generic) else c for c in self.classes],
            "preprocessing": {
                "normalize": cfg.dataset.normalize,
                "mean": None if statistics is None else statistics[0][0].tolist(),
                "std": None if statistics is None else statistics[1][0].tolist(),
                "how": "x = (features as float32, reshaped to input_shape - mean) / std",
            },
        }
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        self.write(MODEL, "model.pt", payload=buffer.getvalue())
        return self.write(MODEL, "model.json", payload=json.dumps(meta, indent=2).encode())


# --- live init -------------------------------------------------------------------------


def _read_frame(source, what: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame, or a Parquet file read as one; (frame, its name for messages)."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), f"the {what} DataFrame"
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ConfigError(f"The {what} file {path} does not exist.")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"The {what} file {path} is not a Parquet table ({type(exc).__name__}: {reason}).") from None
    return frame, path


def _check_pool(frame: pd.DataFrame, name: str) -> list[str]:
    """The pool's feature columns, or a ConfigError naming the file."""
    frame.columns = [str(c) for c in frame.columns]
    if ID not in frame.columns:
        raise ConfigError(f"The pool {name} has no '{ID}' column (it has {', '.join(frame.columns) or 'none'}).")
    if LABEL in frame.columns:
        raise ConfigError(
            f"The pool {name} has a '{LABEL}' column; the pool is the unlabelled data: leave it out "
            f"(labels arrive in {LABELS}/)."
        )
    if len(frame) == 0:
        raise ConfigError(f"The pool {name} is empty: it needs at least one sample to label.")
    ids = frame[ID]
    if ids.isna().any():
        raise ConfigError(f"The pool {name} has a missing id in row {int(np.flatnonzero(ids.isna())[0])}.")
    if not (pd.api.types.is_integer_dtype(ids) or all(isinstance(v, str) for v in ids)):
        raise ConfigError(f"The pool {name}'s ids must be integers or strings, got {ids.dtype}.")
    keys = pd.Series([key(v) for v in ids])
    if keys.duplicated().any():
        raise ConfigError(f"The pool {name} has the id {keys[keys.duplicated()].iloc[0]!r} twice; ids are unique.")
    features = [c for c in frame.columns if c != ID]
    if not features:
        raise ConfigError(f"The pool {name} has no feature column besides '{ID}'.")
    return features


def _check_eval(frame: pd.DataFrame, name: str, features: list[str], pool: str) -> None:
    frame.columns = [str(c) for c in frame.columns]
    if LABEL not in frame.columns:
        raise ConfigError(f"The evaluation set {name} has no '{LABEL}' column (it has {', '.join(frame.columns)}).")
    if len(frame) == 0:
        raise ConfigError(f"The evaluation set {name} is empty.")
    if frame[LABEL].isna().any():
        raise ConfigError(f"The evaluation set {name} has a missing label.")
    mine = [c for c in frame.columns if c not in (ID, LABEL)]
    if set(mine) != set(features):
        missing, extra = sorted(set(features) - set(mine)), sorted(set(mine) - set(features))
        differ = "; ".join(
            part
            for part in (
                f"{pool} has {', '.join(map(repr, missing))} and {name} not" if missing else "",
                f"{name} has {', '.join(map(repr, extra))} and {pool} not" if extra else "",
            )
            if part
        )
        raise ConfigError(f"The pool's features differ from the evaluation set's: {differ}.")


def _classes(labels: pd.Series, num_classes: int | None, name: str) -> list:
    """The class labels: integers 0..C-1 (C: dataset.num_classes, else the largest + 1), or the
    evaluation set's distinct strings, sorted."""
    values = labels.to_numpy()
    if all(isinstance(v, str) for v in values):
        classes = sorted(set(values))
    else:
        try:
            ints = np.array([int(key(v)) for v in values])
        except ValueError:
            raise ConfigError(f"The labels of {name} must be integer class indices or strings.") from None
        if ints.min() < 0:
            raise ConfigError(f"The labels of {name} must be class indices >= 0, got {ints.min()}.")
        if num_classes is not None and ints.max() >= num_classes:
            raise ConfigError(f"A label of {name} is {ints.max()}, but dataset.num_classes is {num_classes}.")
        classes = list(range(num_classes if num_classes is not None else int(ints.max()) + 1))
    if len(classes) < 2:
        raise ConfigError(f"The evaluation set {name} holds a single class; a classifier needs at least 2.")
    return classes


def live_config(config, sets, plugins, features: list[str]) -> Config:
    """The user's config (today's keys), with the dataset section a live project's: the
    ``files`` dataset over the project's copies (its own keys ``shape``, ``normalize`` and
    ``num_classes`` may be set; the rest are the project's)."""
    cfg = build(config, ["dataset=files", *sets], plugins)
    if cfg.dataset.name != "files":
        raise ConfigError(
            f"A live project's data is its pool and evaluation set, not the dataset {cfg.dataset.name!r}; "
            "of the dataset section set only shape, normalize or num_classes."
        )
    taken = [k for k in ("train", "test", "inputs") if cfg.dataset.params().get(k) is not None]
    if taken or cfg.dataset.labels != "y":
        key = taken[0] if taken else "labels"
        raise ConfigError(
            f"The 'dataset.{key}' key is the live project's own (its pool, evaluation set, feature columns and "
            "label column); leave it out."
        )
    data = cfg.to_dict()
    data["dataset"].update(
        train=f"{LIVE}/pool.parquet", test=f"{LIVE}/eval.parquet", eval="test", labels=LABEL, inputs=features
    )
    return build(data)


def init(pool, evaluation, out: str, config=None, sets=(), plugins=()) -> Project:
    """Make a live project in ``out``: the pool and evaluation set checked and copied, the
    config frozen, and round 1's query (``rounds.initial`` ids, the seeded choice a simulated
    trial makes in round 1).  Every problem is a ConfigError before anything is written."""
    from engine.trial.loop import initial_picks

    out = location(out)
    if Project(out, (), (), None, "", "").exists(LIVE, "project.json"):
        raise ConfigError(f"{out} is already a live project: step it with `warmstart live step {out}`.")
    pool_frame, pool_name = _read_frame(pool, "pool")
    eval_frame, eval_name = _read_frame(evaluation, "evaluation")
    features = _check_pool(pool_frame, pool_name)
    _check_eval(eval_frame, eval_name, features, pool_name)
    cfg = live_config(config, sets, plugins, features)
    classes = _classes(eval_frame[LABEL], cfg.dataset.num_classes, eval_name)
    if cfg.scaling.workers is not None:
        raise ConfigError("A live project trains in the process that steps it; 'scaling.workers' is not supported.")
    plan = plan_rounds(cfg, len(pool_frame))  # rounds.initial and per_round against the pool
    out = check_results_folder(out, cfg.trial_id(), trial=True)
    shape = tuple(cfg.dataset.shape) if cfg.dataset.shape else None
    project = Project(out, tuple(features), tuple(classes), shape, cfg.dataset.normalize, cfg.trial_id())
    pool_bytes, eval_bytes = parquet_bytes(pool_frame[[ID, *features]]), parquet_bytes(eval_frame[[*features, LABEL]])
    project._raw(pool_bytes, eval_bytes)  # through the engine's reader: non-numeric features, NaN, a wrong shape
    project.write(LIVE, "pool.parquet", payload=pool_bytes)
    project.write(LIVE, "eval.parquet", payload=eval_bytes)
    project.write(LIVE, "config.yaml", payload=cfg.to_yaml().encode())
    if is_local(out):  # the folders people drop files in (an object store has no folders)
        for folder in (LABELS, BATCHES, QUERIES):
            os.makedirs(project.path(folder), exist_ok=True)
    first = initial_picks(cfg.seed, plan.n_pool, plan.initial)  # the simulated round 1's draw
    project.write_query(1, pool_frame[ID].to_numpy()[first], None)
    meta = {
        "version": VERSION,
        "features": features,
        "classes": classes,
        "shape": cfg.dataset.shape,
        "normalize": cfg.dataset.normalize,
        "trial_id": cfg.trial_id(),
    }
    project.write(LIVE, "project.json", payload=json.dumps(meta, default=_plain).encode())  # last: the project exists
    return project


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


# --- the served model ------------------------------------------------------------------


class Served:
    """An exported model, loaded for serving: ``predict(frame)`` gives each row's class label.

    Needs warmstart (or the plugin that registers the model) installed where it serves, to
    build the architecture that ``model.json`` names; the preprocessing is in ``model.json``."""

    def __init__(self, project: Project) -> None:
        from engine.compute.models import build_model
        from engine.schema.plugins import load_plugins

        meta = project.read(MODEL, "model.json")
        if meta is None:
            raise ConfigError(f"{project.path(MODEL)} holds no model yet: the first step exports one.")
        self.meta = json.loads(meta)
        load_plugins(self.meta["plugins"])
        spec, shape = self.meta["model"], tuple(self.meta["input_shape"])
        self.model = build_model(spec["name"], spec["params"], shape, len(self.meta["classes"]))
        weights = io.BytesIO(project.read(MODEL, "model.pt"))
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()

    def inputs(self, frame: pd.DataFrame) -> torch.Tensor:
        """The frame's feature columns, preprocessed as the model was trained: float [N, *input_shape]."""
        pre = self.meta["preprocessing"]
        x = torch.from_numpy(np.array(frame[self.meta["features"]], dtype=np.float32))
        x = x.reshape(len(frame), *self.meta["input_shape"])
        if pre["mean"] is None:
            return x
        mean = torch.tensor(pre["mean"], dtype=torch.float32)
        std = torch.tensor(pre["std"], dtype=torch.float32)
        return (x - mean) / std

    def probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(self.model(self.inputs(frame)), dim=1).numpy()

    def predict(self, frame: pd.DataFrame) -> list:
        classes = self.meta["classes"]
        return [classes[i] for i in self.probabilities(frame).argmax(1)]
