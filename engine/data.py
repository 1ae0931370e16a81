"""Datasets as tensors.

Each dataset is read once into uint8 arrays ([N, C, H, W] images, [N] labels), split
into the pool (the samples rounds draw from) and the evaluation set, normalised per
channel, and moved to the training device as one float tensor per split.  The
training loop then takes batches as index slices of those tensors: no per-sample
DataLoader or transform in the hot loop.

``digits`` (scikit-learn's bundled 8x8 digits) needs no download.  ``cifar10``,
``cifar100`` and ``svhn`` are read from their official on-disk formats under
``dataset.root``; when missing they are downloaded there by torchvision.
"""

from __future__ import annotations

import fcntl
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.registry import ConfigError


class DatasetError(ConfigError):
    """A dataset that cannot be read or fetched. One line, meant for the user."""


@dataclass
class RawSplit:
    images: np.ndarray  # [N, C, H, W] uint8
    labels: np.ndarray  # [N] int64


@dataclass
class RawDataset:
    train: RawSplit
    test: RawSplit | None  # None: the dataset has no official test split
    num_classes: int


@dataclass
class Data:
    """One trial's tensors on its device."""

    pool_x: torch.Tensor  # [N, C, H, W] float32, normalised
    pool_y: torch.Tensor  # [N] int64
    eval_x: torch.Tensor  # [M, C, H, W]
    eval_y: torch.Tensor  # [M]
    pool_index: np.ndarray  # [N] the dataset (training-split) index of each pool position
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pool_x.shape[1:])


# --- readers of the official formats ------------------------------------------------

DATASETS: dict[str, Callable[[str, bool], RawDataset]] = {}
DATASET_DOCS: dict[str, str] = {}


def dataset(name: str, doc: str):
    def wrap(fn):
        DATASETS[name] = fn
        DATASET_DOCS[name] = doc
        return fn

    return wrap


@dataset("digits", "scikit-learn's bundled 8x8 handwritten digits, 1x8x8, 10 classes, 1797 images (no download)")
def load_digits(root: str, download: bool) -> RawDataset:
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
        os.makedirs(root, exist_ok=True)
        # Trials starting together on one node would otherwise download the same files at once.
        with open(os.path.join(root, ".warmstart-download.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if missing():
                fetch()
    except Exception as exc:  # no network, a proxy, a full disk: the same advice applies
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"Dataset file {missing()[0]} not found under {root} and download failed ({reason}): {hint}."
        ) from None
    if missing():
        raise DatasetError(f"Dataset file {missing()[0]} still missing under {root} after download: {hint}.")


@dataset("cifar10", "CIFAR-10, 3x32x32, 10 classes, 50,000 train / 10,000 test (torchvision download)")
def load_cifar10(root: str, download: bool) -> RawDataset:
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


@dataset("cifar100", "CIFAR-100 (fine labels), 3x32x32, 100 classes, 50,000 train / 10,000 test (torchvision download)")
def load_cifar100(root: str, download: bool) -> RawDataset:
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


@dataset("svhn", "SVHN cropped digits, 3x32x32, 10 classes, 73,257 train / 26,032 test (torchvision download)")
def load_svhn(root: str, download: bool) -> RawDataset:
    import torchvision

    def fetch() -> None:
        for split in ("train", "test"):
            torchvision.datasets.SVHN(root, split=split, download=True)

    _fetch(root, download, ["train_32x32.mat", "test_32x32.mat"], fetch, "train_32x32.mat and test_32x32.mat")
    return RawDataset(
        _read_svhn(os.path.join(root, "train_32x32.mat")), _read_svhn(os.path.join(root, "test_32x32.mat")), 10
    )


# --- splitting and placing on the device -----------------------------------------------


def load_raw(name: str, root: str, download: bool) -> RawDataset:
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}.")
    root = os.path.expanduser(root)
    try:
        return DATASETS[name](root, download)
    except DatasetError:
        raise
    except Exception as exc:  # a truncated pickle or .mat file: say which dataset, not a traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"Dataset {name!r} under {root} cannot be read ({type(exc).__name__}: {reason}); "
            "the files may be corrupt: delete them to download again."
        ) from None


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


def split_and_place(raw: RawDataset, evaluation: str, holdout: float, split_seed: int, device: torch.device) -> Data:
    """Hold out a random ``holdout`` fraction of the training split (``evaluation='holdout'``),
    or evaluate on the official test split (``'test'``), and move both to ``device``."""
    n_train = raw.train.labels.shape[0]
    if evaluation == "holdout":
        order = np.random.default_rng(split_seed).permutation(n_train)
        n_eval = n_train - pool_size(n_train, evaluation, holdout)
        pool_index, eval_index = np.sort(order[n_eval:]), np.sort(order[:n_eval])
        eval_split = RawSplit(raw.train.images[eval_index], raw.train.labels[eval_index])
    else:
        if raw.test is None:
            raise ConfigError(
                "The 'dataset.eval' value 'test' needs an official test split, which this dataset lacks; use 'holdout'."
            )
        pool_index, eval_split = np.arange(n_train), raw.test

    # Per-channel statistics of the whole training split: fixed per dataset, whatever the seed.
    images = raw.train.images
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = images.std(axis=(0, 2, 3), dtype=np.float64) + 1e-8

    def place(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).to(device=device, dtype=torch.float32)
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return (t - m) / s

    return Data(
        pool_x=place(images[pool_index]),
        pool_y=torch.from_numpy(raw.train.labels[pool_index]).to(device),
        eval_x=place(eval_split.images),
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
