"""Datasets as tensors.

A dataset is a registered loader ``fn(root, download, **params) -> RawDataset`` that
reads its splits once into arrays: inputs ``[N, ...]`` (uint8 images ``[N, C, H, W]``,
float sequences ``[N, C, L]`` or float features ``[N, F]``) and int64 labels ``[N]``.
The engine then splits them into the pool (the samples rounds draw from) and the
evaluation set, normalises them with statistics of the whole training split (per
channel, per feature or not at all: ``RawDataset.normalize``), and moves each split to
the training device as one float tensor.  The training loop takes batches as index
slices of those tensors: no per-sample DataLoader or transform in the hot loop.

A loader's keyword parameters (each with a default) are the config keys
``dataset.<param>``, next to the keys every dataset has (``DATASET_KEYS``); they are
validated against its signature like a model's parameters, and ``warmstart list``
shows them.  The built-ins:

- ``digits`` (scikit-learn's bundled 8x8 digits) needs no download;
- ``cifar10``, ``cifar100`` and ``svhn`` are read from their official on-disk formats
  under ``dataset.root``; when missing they are downloaded there by torchvision;
- ``mnist1d`` is generated offline by the ``mnist1d`` package, then cached under
  ``dataset.root``;
- ``files`` reads your own ``.npz``, ``.pt`` or Parquet files (docs/own-data.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import math
import os
import pickle
import random
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.errors import ConfigError
from engine.schema.catalogue import DATASETS
from engine.schema.config import DATASET_KEYS
from engine.schema.registry import Interval, Nullable, OneOf, Type

# The keys of the `dataset` section that every dataset has; the rest are its loader's parameters.
# How split_and_place standardises inputs with the training split's statistics:
# per_channel: one mean and std per index of axis 1 (an image's colour channel, a
#   sequence's channel, a tabular input's feature), over the samples and all other axes;
# per_feature: one mean and std per input element (each pixel of an image);
# none: the inputs as the loader returns them.
NORMALIZATIONS = ("per_channel", "per_feature", "none")


class DatasetError(ConfigError):
    """A dataset that cannot be read or fetched. One line, meant for the user."""


@dataclass
class RawSplit:
    inputs: np.ndarray  # [N, ...]: uint8 images [N, C, H, W], or float [N, C, L] / [N, F]
    labels: np.ndarray  # [N] int64

    @property
    def images(self) -> np.ndarray:
        """The inputs, by their name from when every dataset was images."""
        return self.inputs


@dataclass
class RawDataset:
    train: RawSplit
    test: RawSplit | None  # None: the dataset has no official test split
    num_classes: int
    normalize: str = "per_channel"  # one of NORMALIZATIONS


@dataclass
class Data:
    """One trial's tensors on its device."""

    pool_x: torch.Tensor  # [N, ...] float32, normalised
    pool_y: torch.Tensor  # [N] int64
    eval_x: torch.Tensor  # [M, ...]
    eval_y: torch.Tensor  # [M]
    pool_index: np.ndarray  # [N] the dataset (training-split) index of each pool position
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pool_x.shape[1:])


# --- the registry ----------------------------------------------------------------------


def register(name: str, constraints: dict | None = None):
    """Register a loader ``fn(root, download, **params) -> RawDataset`` under ``name``.

    ``root`` is ``dataset.root`` (``~`` expanded) and ``download`` is ``dataset.download``;
    every further parameter needs a default and is the config key ``dataset.<param>``,
    its allowed values declared in ``constraints`` (as for models and strategies).  The
    first line of the docstring describes the dataset in ``warmstart list``.
    """

    def wrap(fn: Callable) -> Callable:
        names = list(inspect.signature(fn).parameters)[DATASETS.n_inputs :]
        clash = [p for p in names if p in DATASET_KEYS]
        if clash:
            raise TypeError(
                f"dataset {name!r}: parameter {clash[0]!r} clashes with the common key 'dataset.{clash[0]}'"
            )
        return DATASETS.add(name, fn, constraints)

    return wrap


def dataset(name: str, doc: str):
    """The decorator from before datasets had parameters (a loader ``fn(root, download)``
    and its ``doc`` line), kept for plugins written against it; new code uses ``register``."""

    def wrap(fn: Callable) -> Callable:
        register(name)(fn)
        DATASETS.get(name).doc = doc
        return fn

    return wrap


# --- readers of the official formats ------------------------------------------------


@register("digits")
def load_digits(root: str, download: bool) -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits, 1x8x8, 10 classes, 1797 images (no download)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values 0..16, exact in uint8
    return RawDataset(RawSplit(images, bunch.target.astype(np.int64)), None, 10)


def _read_cifar_batches(folder: str, files: list[str], label_key: str) -> RawSplit:
    images, labels = [], []
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # Python 2 pickles of numpy arrays
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return RawSplit(np.concatenate(images), np.concatenate(labels))


@contextlib.contextmanager
def _exclusive(folder: str, name: str) -> Iterator[None]:
    """Hold the lock file ``folder/name``: trials starting together on one node (Ray Tune
    runs several) would otherwise download or generate the same files at once."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fetch(root: str, download: bool, needed: list[str], fetch: Callable[[], None], where: str) -> None:
    """Make sure ``needed`` files exist under ``root``, downloading them with torchvision if allowed."""

    def missing() -> list[str]:
        return [n for n in needed if not os.path.exists(os.path.join(root, n))]

    if not missing():
        return
    hint = f"put {where} under {root}"
    if not download:
        raise DatasetError(f"Dataset file {missing()[0]} not found under {root} (dataset.download is false): {hint}.")
    try:
        with _exclusive(root, ".warmstart-download.lock"):
            if missing():
                fetch()
    except Exception as exc:  # no network, a proxy, a full disk: the same advice applies
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"Dataset file {missing()[0]} not found under {root} and download failed ({reason}): {hint}."
        ) from None
    if missing():
        raise DatasetError(f"Dataset file {missing()[0]} still missing under {root} after download: {hint}.")


@register("cifar10")
def load_cifar10(root: str, download: bool) -> RawDataset:
    """CIFAR-10, 3x32x32, 10 classes, 50,000 train / 10,000 test (torchvision download)."""
    import torchvision

    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    _fetch(
        root,
        download,
        [os.path.join(folder, f) for f in train_files + ["test_batch"]],
        lambda: torchvision.datasets.CIFAR10(root, train=True, download=True),
        "the extracted cifar-10-python.tar.gz (folder cifar-10-batches-py/)",
    )
    path = os.path.join(root, folder)
    train = _read_cifar_batches(path, train_files, "labels")
    test = _read_cifar_batches(path, ["test_batch"], "labels")
    return RawDataset(train, test, 10)


@register("cifar100")
def load_cifar100(root: str, download: bool) -> RawDataset:
    """CIFAR-100 (fine labels), 3x32x32, 100 classes, 50,000 train / 10,000 test (torchvision download)."""
    import torchvision

    folder = "cifar-100-python"
    _fetch(
        root,
        download,
        [os.path.join(folder, "train"), os.path.join(folder, "test")],
        lambda: torchvision.datasets.CIFAR100(root, train=True, download=True),
        "the extracted cifar-100-python.tar.gz (folder cifar-100-python/)",
    )
    path = os.path.join(root, folder)
    train = _read_cifar_batches(path, ["train"], "fine_labels")
    test = _read_cifar_batches(path, ["test"], "fine_labels")
    return RawDataset(train, test, 100)


def _read_svhn(path: str) -> RawSplit:
    from scipy.io import loadmat

    mat = loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)  # [32,32,3,N] -> [N,3,32,32]
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10
    return RawSplit(images, labels)


@register("svhn")
def load_svhn(root: str, download: bool) -> RawDataset:
    """SVHN cropped digits, 3x32x32, 10 classes, 73,257 train / 26,032 test (torchvision download)."""
    import torchvision

    def fetch() -> None:
        for split in ("train", "test"):
            torchvision.datasets.SVHN(root, split=split, download=True)

    _fetch(root, download, ["train_32x32.mat", "test_32x32.mat"], fetch, "train_32x32.mat and test_32x32.mat")
    return RawDataset(
        _read_svhn(os.path.join(root, "train_32x32.mat")), _read_svhn(os.path.join(root, "test_32x32.mat")), 10
    )


# --- MNIST-1D: generated offline, cached under dataset.root ----------------------------


class IntPair:
    """A list [low, high] of two ints with 0 <= low <= high (mnist1d's `padding`)."""

    def check(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] <= value[1]
        )

    def kind(self) -> Any:
        return list[int]

    def describe(self) -> str:
        return "a list [low, high] of two ints with 0 <= low <= high"


def _save_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then renamed: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is readable like any dataset file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _read_npz(path: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # missing, truncated or not an .npz: make it again
        return None


def _cached(path: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored at ``path``; made once (under a lock, written atomically) when missing
    or unreadable.  Where ``path`` cannot be written, made every time, with a warning."""
    arrays = _read_npz(path) if os.path.exists(path) else None
    if arrays is not None:
        return arrays
    try:
        with _exclusive(os.path.dirname(path), ".warmstart-generate.lock"):
            arrays = _read_npz(path) if os.path.exists(path) else None  # another trial made it meanwhile
            if arrays is None:
                arrays = make()
                _save_atomic(path, arrays)
    except OSError as exc:  # a read-only or full dataset.root: the data are good, only not cached
        warnings.warn(f"cannot cache {path} ({exc.strerror or exc}); generating it for every trial", stacklevel=2)
        return arrays if arrays is not None else make()
    return arrays


def _generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset seeds Python's and NumPy's global generators: leave them as they were.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {
        "x": np.asarray(data["x"], dtype=np.float32)[:, None],  # [N, 40] -> [N, 1, 40]: one channel
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32)[:, None],
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


@register(
    "mnist1d",
    {
        "size": Interval(20, integer=True),
        "train_split": Interval(0, 1, low_open=True, high_open=True),
        "template_len": Interval(1, integer=True),
        "padding": IntPair(),
        "scale_coeff": Interval(0),
        "max_translation": Interval(1, integer=True),
        "corr_noise_scale": Interval(0),
        "iid_noise_scale": Interval(0),
        "shear_scale": Interval(0),
        "final_seq_length": Interval(2, integer=True),
        "seed": Interval(0, 2**32 - 1, integer=True),
    },
)
def load_mnist1d(
    root: str,
    download: bool,
    size: int = 10_000,
    train_split: float = 0.8,
    template_len: int = 12,
    padding: list = [36, 60],  # noqa: B006 (a config value: YAML lists, never mutated)
    scale_coeff: float = 0.4,
    max_translation: int = 48,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 0.02,
    shear_scale: float = 0.75,
    shuffle_seq: bool = False,
    final_seq_length: int = 40,
    seed: int = 42,
) -> RawDataset:
    """MNIST-1D (Greydanus 2020), 1x40 float sequences, 10 classes, `size` samples made offline, 80% train / 20% test."""
    # The parameters after `size` are the mnist1d package's own (mnist1d.get_dataset_args(),
    # its defaults: size 5,000 with them is the package's standard dataset).  The package
    # makes size // 10 samples per class and splits them train_split / rest as its test split.
    args = {
        "num_samples": size,
        "train_split": train_split,
        "template_len": template_len,
        "padding": list(padding),
        "scale_coeff": scale_coeff,
        "max_translation": max_translation,
        "corr_noise_scale": corr_noise_scale,
        "iid_noise_scale": iid_noise_scale,
        "shear_scale": shear_scale,
        "shuffle_seq": shuffle_seq,
        "final_seq_length": final_seq_length,
        "seed": seed,
    }
    n = 10 * (size // 10)
    n_train = int(n * train_split)
    if not 0 < n_train < n:
        raise DatasetError(
            f"The mnist1d parameters size={size} and train_split={train_split} leave {n_train} of {n} samples "
            "for training: both splits need at least one."
        )
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(root, "mnist1d", f"mnist1d-{size}-seed{seed}-{digest}.npz")
    arrays = _cached(path, lambda: _generate_mnist1d(args))
    return RawDataset(RawSplit(arrays["x"], arrays["y"]), RawSplit(arrays["x_test"], arrays["y_test"]), 10)


# --- your own files: .npz, .pt, Parquet ------------------------------------------------

FILE_FORMATS = (".npz", ".pt", ".parquet")


class Names:
    """A string, or a non-empty list of strings (column names)."""

    def check(self, value: Any) -> bool:
        if isinstance(value, str):
            return bool(value)
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)

    def describe(self) -> str:
        return "a name or a list of names"


class Shape:
    """A list of positive ints: the shape of one sample."""

    def check(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        )

    def kind(self) -> Any:
        return list[int]

    def describe(self) -> str:
        return "a list of ints >= 1 (one sample's shape, e.g. [1, 28, 28])"


def _files_error(message: str) -> DatasetError:
    return DatasetError(f"Dataset 'files': {message}")


def _resolve(path: str) -> str:
    """``~`` expanded; a relative path is taken from the directory warmstart was started in
    (Ray Tune runs each trial in its own directory and records the original one)."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.join(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()), path)


def _read_arrays(path: str) -> Callable[[str, str], Any]:
    """A lookup of the arrays of a .npz or .pt file: ``get(name, param)``, ``param`` the key that named it."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                stored = {k: f[k] for k in f.files}
        else:
            stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _files_error(f"cannot read {path} ({type(exc).__name__}: {reason}).") from None
    if not isinstance(stored, dict):
        raise _files_error(
            f"{path} holds a {type(stored).__name__}; save a dict of arrays, e.g. {{'x': ..., 'y': ...}}."
        )

    def get(name: str, param: str) -> Any:
        if name not in stored:
            have = ", ".join(repr(k) for k in stored) or "none"
            raise _files_error(f"{path} has no array {name!r} (it has {have}); set dataset.{param}.")
        value = stored[name]
        return value.numpy() if isinstance(value, torch.Tensor) else value

    return get


def _read_parquet(path: str, inputs: str | list | None, labels: str) -> tuple[Any, Any]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _files_error(f"cannot read {path} ({type(exc).__name__}: {reason}).") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns

    def missing(name: str, param: str) -> DatasetError:
        return _files_error(
            f"{path} has no column {name!r} (it has {', '.join(map(repr, columns))}); set dataset.{param}."
        )

    if labels not in columns:
        raise missing(labels, "labels")
    if inputs is None:
        features = [c for c in columns if c != labels]
        if not features:
            raise _files_error(f"{path} has no column besides the labels {labels!r}.")
    else:
        features = [inputs] if isinstance(inputs, str) else list(inputs)
        for name in features:
            if name not in columns:
                raise missing(name, "inputs")
    if len(features) == 1 and frame[features[0]].dtype == object:  # one array per row (e.g. an image)
        try:
            x = np.stack([np.asarray(v) for v in frame[features[0]]])
        except ValueError:
            raise _files_error(f"the rows of column {features[0]!r} in {path} have different lengths.") from None
    else:
        bad = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise _files_error(
                f"column {bad[0]!r} in {path} is not numeric ({frame[bad[0]].dtype}); "
                "encode it as numbers or leave it out with dataset.inputs."
            )
        x = frame[features].to_numpy()
    return x, frame[labels].to_numpy()


def read_table(path: str, features: list[str], key: str, shape: list | None) -> tuple[np.ndarray, np.ndarray]:
    """A Parquet file's inputs, read as the ``files`` dataset reads them (``features`` its
    columns, reshaped to ``shape``), and its column ``key`` as it is: a live project's pool
    and its ids, or its evaluation set and its labels (engine/live/)."""
    x, column = _read_parquet(path, features, key)
    return _as_inputs(x, path, shape), column


def _as_inputs(x: Any, path: str, shape: list | None) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.ndim == 0:
        raise _files_error(f"the inputs in {path} must be an array of numbers, got {x.dtype} of shape {x.shape}.")
    if x.ndim == 1:  # one feature per sample
        x = x[:, None]
    if shape is not None:
        if math.prod(shape) != math.prod(x.shape[1:]):
            raise _files_error(
                f"dataset.shape {shape} does not fit the {math.prod(x.shape[1:])} values per sample in {path} "
                f"(shape {list(x.shape[1:])})."
            )
        x = x.reshape(x.shape[0], *shape)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise _files_error(f"the inputs in {path} contain NaN or infinite values.")
    return np.ascontiguousarray(x) if x.dtype == np.uint8 else x.astype(np.float32)


def _as_labels(y: Any, path: str, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise _files_error(f"the labels {name!r} in {path} must be one class index per sample, got shape {y.shape}.")
    integral = y.dtype.kind in "biu" or (
        y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
    )
    if not integral:
        example = next((v for v in y.tolist() if not (isinstance(v, (int, float)) and float(v).is_integer())), y[0])
        raise _files_error(
            f"the labels {name!r} in {path} must be integer class indices 0..C-1, got {y.dtype} values such as {example!r}."
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise _files_error(f"the labels {name!r} in {path} must be class indices >= 0, got {int(y.min())}.")
    return y


def _read_split(path: str, inputs: str | list | None, labels: str, shape: list | None) -> RawSplit:
    if not os.path.isfile(path):
        raise _files_error(f"file {path} not found.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_FORMATS:
        raise _files_error(f"{path} is not a {', '.join(FILE_FORMATS)} file.")
    if ext == ".parquet":
        x, y = _read_parquet(path, inputs, labels)
    else:
        if inputs is not None and not isinstance(inputs, str):
            raise _files_error(f"dataset.inputs names one array of {path}, got the list {inputs!r}.")
        get = _read_arrays(path)
        x, y = get(inputs or "x", "inputs"), get(labels, "labels")
    x, y = _as_inputs(x, path, shape), _as_labels(y, path, labels)
    if x.shape[0] != y.shape[0]:
        raise _files_error(f"{path} has {x.shape[0]} inputs but {y.shape[0]} labels.")
    if x.shape[0] == 0:
        raise _files_error(f"{path} has no samples.")
    return RawSplit(x, y)


@register(
    "files",
    {
        "train": Nullable(Type(str)),
        "test": Nullable(Type(str)),
        "inputs": Nullable(Names()),
        "labels": Type(str),
        "shape": Nullable(Shape()),
        "num_classes": Nullable(Interval(2, integer=True)),
        "normalize": OneOf(*NORMALIZATIONS),
    },
)
def load_files(
    root: str,
    download: bool,
    train: str | None = None,
    test: str | None = None,
    inputs: str | list | None = None,
    labels: str = "y",
    shape: list | None = None,
    num_classes: int | None = None,
    normalize: str = "per_channel",
) -> RawDataset:
    """Your own .npz, .pt or Parquet files: inputs [N, ...] and integer labels, a train and an optional test file."""
    # train/test: paths (relative: to where warmstart was started); inputs: the array of a
    # .npz/.pt file (default 'x'), or Parquet columns (default: all but the labels); labels:
    # the array or column of class indices; shape: one sample's shape, to reshape flat rows;
    # num_classes: default the largest label + 1; normalize: one of NORMALIZATIONS.
    if train is None:
        raise _files_error("set dataset.train to a .npz, .pt or .parquet file of inputs and labels.")
    train_split = _read_split(_resolve(train), inputs, labels, shape)
    test_split = None if test is None else _read_split(_resolve(test), inputs, labels, shape)
    if test_split is not None and test_split.inputs.shape[1:] != train_split.inputs.shape[1:]:
        raise _files_error(
            f"the test inputs have shape {list(test_split.inputs.shape[1:])} per sample, "
            f"the training inputs {list(train_split.inputs.shape[1:])}."
        )
    largest = max(int(s.labels.max()) for s in (train_split, test_split) if s is not None)
    if num_classes is None:
        num_classes = largest + 1
        if num_classes < 2:
            raise _files_error("the labels hold a single class; a classifier needs at least 2.")
    elif largest >= num_classes:
        raise _files_error(
            f"a label is {largest}, but dataset.num_classes is {num_classes} (labels 0..{num_classes - 1})."
        )
    return RawDataset(train_split, test_split, num_classes, normalize)


# --- splitting and placing on the device -----------------------------------------------


def _check_raw(raw: RawDataset, name: str) -> None:
    """What split_and_place relies on, so a plugin's loader fails here with one line."""

    def fail(problem: str) -> DatasetError:
        return DatasetError(f"Dataset {name!r} returned {problem}.")

    if not isinstance(raw, RawDataset):
        raise fail(f"a {type(raw).__name__}, not a RawDataset")
    for split, which in ((raw.train, "training"), (raw.test, "test")):
        if split is None:
            continue
        x, y = np.asarray(split.inputs), np.asarray(split.labels)
        if x.ndim < 2:
            raise fail(f"{which} inputs of shape {x.shape}; they must be [N, ...] with at least one feature axis")
        if y.shape != (x.shape[0],):
            raise fail(f"{x.shape[0]} {which} inputs but labels of shape {y.shape}")
        if x.shape[1:] != np.asarray(raw.train.inputs).shape[1:]:
            raise fail(f"test inputs of shape {x.shape[1:]} per sample, training inputs {raw.train.inputs.shape[1:]}")
    if raw.normalize not in NORMALIZATIONS:
        raise fail(f"normalize={raw.normalize!r}; it must be one of {', '.join(NORMALIZATIONS)}")


def load_raw(name: str, root: str, download: bool, params: dict[str, Any] | None = None) -> RawDataset:
    """Dataset ``name`` read by its loader with ``params`` (its ``dataset.<param>`` keys; the
    loader's defaults fill in the rest), or a one-line DatasetError / ConfigError."""
    entry = DATASETS.get(name)
    values = entry.resolve(dict(params or {}), DATASETS.what)
    root = os.path.expanduser(root)
    try:
        raw = entry.fn(root, download, **values)
    except ConfigError:  # DatasetError included: already one line for the user
        raise
    except Exception as exc:  # a truncated pickle or .mat file: say which dataset, not a traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"Dataset {name!r} under {root} cannot be read ({type(exc).__name__}: {reason}); "
            "the files may be corrupt: delete them to download again."
        ) from None
    _check_raw(raw, name)
    return raw


def pool_size(n_train: int, evaluation: str, holdout: float) -> int:
    """How many training-split samples the rounds draw from; a holdout that leaves either
    side empty is refused."""
    if evaluation != "holdout":
        return n_train
    n_eval = int(round(holdout * n_train))
    if n_eval < 1 or n_eval >= n_train:
        raise ConfigError(
            f"The 'dataset.holdout' parameter {holdout} leaves {n_eval} of {n_train} samples for evaluation "
            f"and {n_train - n_eval} for the pool; it must leave at least one on each side."
        )
    return n_train - n_eval


def input_statistics(inputs: np.ndarray, normalize: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std of ``inputs`` [N, ...] in float64, shaped to broadcast against them
    (``per_channel``: [1, C, 1, ...]; ``per_feature``: [1, ...]); None for ``none``.  A
    constant channel or feature gets std 1, so it maps to 0 instead of dividing by 0."""
    if normalize == "none":
        return None
    axes = (0, *range(2, inputs.ndim)) if normalize == "per_channel" else (0,)
    mean = inputs.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = inputs.std(axis=axes, dtype=np.float64, keepdims=True)
    return mean, np.where(std > 0, std, 1.0) + 1e-8


def split_and_place(raw: RawDataset, evaluation: str, holdout: float, split_seed: int, device: torch.device) -> Data:
    """Hold out a random ``holdout`` fraction of the training split (``evaluation='holdout'``),
    or evaluate on the official test split (``'test'``), normalise both with the whole
    training split's statistics (``raw.normalize``), and move them to ``device``."""
    n_train = raw.train.labels.shape[0]
    if evaluation == "holdout":
        order = np.random.default_rng(split_seed).permutation(n_train)
        n_eval = n_train - pool_size(n_train, evaluation, holdout)
        pool_index, eval_index = np.sort(order[n_eval:]), np.sort(order[:n_eval])
        eval_split = RawSplit(raw.train.inputs[eval_index], raw.train.labels[eval_index])
    else:
        if raw.test is None:
            raise ConfigError(
                "The 'dataset.eval' value 'test' needs an official test split, which this dataset lacks; use 'holdout'."
            )
        pool_index, eval_split = np.arange(n_train), raw.test

    # Statistics of the whole training split: fixed per dataset, whatever the seed.
    inputs = raw.train.inputs
    statistics = input_statistics(inputs, raw.normalize)

    def place(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)
        if statistics is None:
            return t
        m = torch.tensor(statistics[0], dtype=torch.float32, device=device)
        s = torch.tensor(statistics[1], dtype=torch.float32, device=device)
        return (t - m) / s

    return Data(
        pool_x=place(inputs[pool_index]),
        pool_y=torch.from_numpy(raw.train.labels[pool_index]).to(device),
        eval_x=place(eval_split.inputs),
        eval_y=torch.from_numpy(eval_split.labels).to(device),
        pool_index=pool_index,
        num_classes=raw.num_classes,
    )


# --- fractions of a pool (pretraining: `pretrain.fraction`, `pretrain.source_fraction`) ---


def fraction_count(n: int, fraction: float) -> int:
    """How many of ``n`` items a ``fraction`` keeps (at least one; all for 1)."""
    return n if fraction >= 1 else max(1, int(math.floor(fraction * n + 0.5)))


def sample_fraction(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of ``fraction`` of ``n`` items, at random (at least one)."""
    return np.sort(np.random.default_rng(seed).choice(n, fraction_count(n, fraction), replace=False))


def pool_fraction(data: Data, fraction: float, seed: int) -> Data:
    """The same data with only a random ``fraction`` of the pool (the evaluation split is kept whole)."""
    if fraction >= 1:
        return data
    keep = sample_fraction(data.pool_y.shape[0], fraction, seed)
    index = torch.from_numpy(keep).to(data.pool_x.device)
    return Data(
        data.pool_x[index], data.pool_y[index], data.eval_x, data.eval_y, data.pool_index[keep], data.num_classes
    )
