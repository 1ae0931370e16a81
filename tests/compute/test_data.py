"""engine/compute/data.py: the dataset readers on files written here in the official on-disk formats,
and splitting / normalising / placing the splits on a device.  No network: downloads are
either refused (download=False) or monkeypatched to fail.  The dataset registry, the
generated mnist1d and the user's `files` are in tests/compute/test_data_registry.py."""

from __future__ import annotations

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from engine.compute.data import DatasetError, RawDataset, RawSplit, load_raw, split_and_place
from engine.errors import ConfigError

CIFAR_PIXELS = 3 * 32 * 32


def _pixel_offset(channel: int, row: int, col: int) -> int:
    """Where the CIFAR format stores a pixel in a 3072-byte row: the 1024 red values, then the
    1024 green, then the 1024 blue, each channel row-major over the 32x32 image."""
    return channel * 1024 + row * 32 + col


def _write_pickle(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root, per_batch: int = 4, n_test: int = 3, seed: int = 0):
    """The layout of the extracted cifar-10-python.tar.gz, with tiny batches.
    Returns (train data [N, 3072], train labels, test data, test labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_pickle(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    datas, labels = [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, CIFAR_PIXELS), dtype=np.uint8)
        label = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        _write_pickle(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": label,
                "data": data,
                "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
            },
        )
        datas.append(data)
        labels += label
    test_data = rng.integers(0, 256, size=(n_test, CIFAR_PIXELS), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
    _write_pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": test_data,
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        },
    )
    return np.concatenate(datas), np.array(labels), test_data, np.array(test_labels)


def _write_cifar100(root, n_train: int = 6, n_test: int = 2):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_train = [99, 0, 57, 3, 42, 98][:n_train]
    coarse_train = [19, 4, 1, 2, 0, 5][:n_train]
    train = np.zeros((n_train, CIFAR_PIXELS), dtype=np.uint8)
    train[2, _pixel_offset(2, 31, 0)] = 77  # blue channel, last row, first column
    _write_pickle(
        folder / "train",
        {
            "filenames": [f"train_{i}.png" for i in range(n_train)],
            "batch_label": "training batch 1 of 1",
            "fine_labels": fine_train,
            "coarse_labels": coarse_train,
            "data": train,
        },
    )
    _write_pickle(
        folder / "test",
        {
            "filenames": [f"test_{i}.png" for i in range(n_test)],
            "batch_label": "testing batch 1 of 1",
            "fine_labels": [61, 7][:n_test],
            "coarse_labels": [3, 9][:n_test],
            "data": np.full((n_test, CIFAR_PIXELS), 5, dtype=np.uint8),
        },
    )
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []})
    return fine_train


def _write_svhn(root, n: int, y: list[int], marks: dict[int, tuple[int, int, int, int]]):
    """``{split}_32x32.mat``: X [32, 32, 3, N] uint8 (row, column, channel, sample), y [N, 1]."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    X = np.zeros((32, 32, 3, n), dtype=np.uint8)
    for sample, (row, col, channel, value) in marks.items():
        X[row, col, channel, sample] = value
    savemat(str(root / "train_32x32.mat"), {"X": X, "y": np.array(y, dtype=np.uint8).reshape(-1, 1)})
    X_test = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    X_test[0, 31, 0, 1] = 9
    savemat(str(root / "test_32x32.mat"), {"X": X_test, "y": np.array([[10], [4]], dtype=np.uint8)})


# --- CIFAR-10 ------------------------------------------------------------------------


def test_cifar10_reads_the_official_format(tmp_path):
    root = tmp_path / "data"
    train, labels, test, test_labels = _write_cifar10(root)
    # One known pixel: channel 1 (green), row 5, column 7 of training image 6 (in data_batch_2).
    folder = root / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f)
    batch["data"][2] = 0
    batch["data"][2, _pixel_offset(1, 5, 7)] = 201
    _write_pickle(folder / "data_batch_2", batch)

    raw = load_raw("cifar10", str(root), download=False)

    assert raw.num_classes == 10
    assert raw.train.images.shape == (20, 3, 32, 32) and raw.train.images.dtype == np.uint8
    assert raw.train.labels.dtype == np.int64
    image = raw.train.images[6]
    assert image[1, 5, 7] == 201
    assert int(image.sum()) == 201  # nothing else set: the value landed exactly there
    assert image[1, 7, 5] == 0 and image[0, 5, 7] == 0
    # Batches in order 1..5, each row-major channel-first.
    train[6] = batch["data"][2]
    np.testing.assert_array_equal(raw.train.images, train.reshape(20, 3, 32, 32))
    np.testing.assert_array_equal(raw.train.labels, labels)
    # The official test split.
    assert raw.test is not None
    assert raw.test.images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(raw.test.images, test.reshape(3, 3, 32, 32))
    np.testing.assert_array_equal(raw.test.labels, test_labels)


def test_cifar10_test_split_is_the_evaluation_set(tmp_path):
    root = tmp_path / "data"
    train, labels, test, test_labels = _write_cifar10(root)
    data = split_and_place(load_raw("cifar10", str(root), False), "test", 0.3333, 0, torch.device("cpu"))
    assert data.pool_x.shape == (20, 3, 32, 32) and data.eval_x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(data.pool_index, np.arange(20))
    assert data.pool_y.tolist() == labels.tolist()
    assert data.eval_y.tolist() == test_labels.tolist()
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10


def test_root_with_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_cifar10(tmp_path / "datasets")
    raw = load_raw("cifar10", "~/datasets", download=False)
    assert raw.train.images.shape[0] == 20


# --- CIFAR-100 -----------------------------------------------------------------------


def test_cifar100_uses_fine_labels(tmp_path):
    root = tmp_path / "data"
    fine = _write_cifar100(root)
    raw = load_raw("cifar100", str(root), download=False)
    assert raw.num_classes == 100
    assert raw.train.images.shape == (6, 3, 32, 32) and raw.train.images.dtype == np.uint8
    assert raw.train.labels.tolist() == fine
    assert raw.train.images[2, 2, 31, 0] == 77 and int(raw.train.images[2].sum()) == 77
    assert raw.test.labels.tolist() == [61, 7]
    assert raw.test.images.shape == (2, 3, 32, 32) and (raw.test.images == 5).all()


# --- SVHN ----------------------------------------------------------------------------


def test_svhn_transposes_and_maps_label_10_to_digit_0(tmp_path):
    root = tmp_path / "svhn"
    # sample 1: row 5, column 7, channel 2 = 250; sample 3: row 0, column 31, channel 0 = 17
    _write_svhn(root, 4, [10, 1, 5, 10], {1: (5, 7, 2, 250), 3: (0, 31, 0, 17)})
    raw = load_raw("svhn", str(root), download=False)

    assert raw.num_classes == 10
    assert raw.train.images.shape == (4, 3, 32, 32) and raw.train.images.dtype == np.uint8
    assert raw.train.images[1, 2, 5, 7] == 250 and int(raw.train.images[1].sum()) == 250
    assert raw.train.images[3, 0, 0, 31] == 17 and int(raw.train.images[3].sum()) == 17
    assert raw.train.labels.dtype == np.int64
    assert raw.train.labels.tolist() == [0, 1, 5, 0]
    assert raw.test.images.shape == (2, 3, 32, 32)
    assert raw.test.images[1, 0, 0, 31] == 9
    assert raw.test.labels.tolist() == [0, 4]


# --- digits --------------------------------------------------------------------------


def test_digits_are_embedded(tmp_path):
    from sklearn.datasets import load_digits

    raw = load_raw("digits", str(tmp_path / "nowhere"), download=False)
    assert raw.train.images.shape == (1797, 1, 8, 8) and raw.train.images.dtype == np.uint8
    assert raw.num_classes == 10 and raw.test is None
    reference = load_digits()
    np.testing.assert_array_equal(raw.train.images[:, 0], reference.images)
    np.testing.assert_array_equal(raw.train.labels, reference.target)
    assert not (tmp_path / "nowhere").exists()  # nothing fetched, nothing created


def test_digits_have_no_test_split(tmp_path):
    raw = load_raw("digits", str(tmp_path), download=False)
    with pytest.raises(ConfigError, match="dataset.eval"):
        split_and_place(raw, "test", 0.3333, 0, torch.device("cpu"))


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_raw("mnist", str(tmp_path), download=False)
    for name in ("cifar10", "cifar100", "digits", "svhn"):
        assert name in str(info.value)


# --- missing files -------------------------------------------------------------------

MISSING = [
    ("cifar10", "CIFAR10", "cifar-10-batches-py"),
    ("cifar100", "CIFAR100", "cifar-100-python"),
    ("svhn", "SVHN", "train_32x32.mat"),
]


@pytest.mark.parametrize(("name", "tv_class", "what"), MISSING)
def test_missing_files_without_download(tmp_path, monkeypatch, name, tv_class, what):
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError("download=False must not try to download")

    monkeypatch.setattr(torchvision.datasets, tv_class, no_download)
    root = tmp_path / "empty"
    with pytest.raises(DatasetError) as info:
        load_raw(name, str(root), download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(root) in message
    assert what in message  # what to put there
    assert isinstance(info.value, ConfigError)  # the CLI turns it into one line, exit 2


@pytest.mark.parametrize(("name", "tv_class", "what"), MISSING)
def test_failed_download_is_one_line(tmp_path, monkeypatch, name, tv_class, what):
    import torchvision

    attempts = []

    def offline(*args, **kwargs):
        attempts.append((args, kwargs))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, tv_class, offline)
    root = tmp_path / "cache"
    with pytest.raises(DatasetError) as info:
        load_raw(name, str(root), download=True)
    message = str(info.value)
    assert attempts, "download=True must try torchvision's download"
    assert "\n" not in message
    assert "download failed" in message
    assert "no network" in message
    assert str(root) in message and what in message


def test_download_that_leaves_files_missing(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: None)  # "succeeds", writes nothing
    with pytest.raises(DatasetError) as info:
        load_raw("cifar10", str(tmp_path), download=True)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_existing_files_are_not_downloaded_again(tmp_path, monkeypatch):
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError("files are present: no download")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    _write_cifar10(tmp_path)
    assert load_raw("cifar10", str(tmp_path), download=True).train.images.shape[0] == 20


def test_partial_cifar10_names_the_missing_file(tmp_path):
    _write_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DatasetError) as info:
        load_raw("cifar10", str(tmp_path), download=False)
    assert "test_batch" in str(info.value)


def test_partial_cifar10_is_refused(tmp_path):
    _write_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_5")
    with pytest.raises(DatasetError) as info:
        load_raw("cifar10", str(tmp_path), download=False)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_corrupt_cifar10_file_is_one_line_error(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02truncated")
    with pytest.raises(DatasetError) as info:
        load_raw("cifar10", str(tmp_path), download=False)
    assert "\n" not in str(info.value) and "corrupt" in str(info.value) and "'cifar10'" in str(info.value)


# --- split_and_place -----------------------------------------------------------------


def _synthetic(n: int = 301, seed: int = 0) -> RawDataset:
    """Per-channel different distributions; label i identifies training image i."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, 4, 4), dtype=np.uint8)
    images[:, 0] = rng.integers(0, 50, size=(n, 4, 4))
    images[:, 1] = rng.integers(100, 256, size=(n, 4, 4))
    images[:, 2] = rng.integers(0, 256, size=(n, 4, 4))
    test = RawSplit(np.zeros((5, 3, 4, 4), dtype=np.uint8), np.arange(5, dtype=np.int64))
    return RawDataset(RawSplit(images, np.arange(n, dtype=np.int64)), test, 10)


def test_holdout_split_is_disjoint_and_complete():
    raw = _synthetic()
    data = split_and_place(raw, "holdout", 0.3333, 7, torch.device("cpu"))
    pool, held = data.pool_y.tolist(), data.eval_y.tolist()
    assert len(held) == round(0.3333 * 301) == 100
    assert len(pool) == 201
    assert set(pool).isdisjoint(held)
    assert sorted(pool + held) == list(range(301))
    np.testing.assert_array_equal(data.pool_index, np.array(pool))
    assert data.eval_x.shape == (100, 3, 4, 4) and data.pool_x.shape == (201, 3, 4, 4)


def test_holdout_split_depends_on_the_seed_only():
    raw = _synthetic()
    cpu = torch.device("cpu")
    first = split_and_place(raw, "holdout", 0.3333, 7, cpu)
    again = split_and_place(raw, "holdout", 0.3333, 7, cpu)
    other = split_and_place(raw, "holdout", 0.3333, 8, cpu)
    assert torch.equal(first.eval_y, again.eval_y) and torch.equal(first.pool_x, again.pool_x)
    np.testing.assert_array_equal(first.pool_index, again.pool_index)
    assert set(first.eval_y.tolist()) != set(other.eval_y.tolist())


def test_holdout_fraction_is_respected():
    raw = _synthetic(n=90)
    data = split_and_place(raw, "holdout", 0.5, 0, torch.device("cpu"))
    assert data.eval_y.shape[0] == 45 and data.pool_y.shape[0] == 45


def test_normalised_per_channel_over_the_training_split():
    raw = _synthetic()
    data = split_and_place(raw, "holdout", 0.3333, 3, torch.device("cpu"))
    whole = torch.cat([data.pool_x, data.eval_x]).double()  # the whole training split
    mean = whole.mean(dim=(0, 2, 3))
    std = whole.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_normalised_test_split_uses_training_statistics():
    raw = _synthetic()
    data = split_and_place(raw, "test", 0.3333, 0, torch.device("cpu"))
    torch.testing.assert_close(
        data.pool_x.double().mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    # The all-zero test images map to -mean/std of the training channels.
    images = raw.train.images.astype(np.float64)
    expected = -images.mean(axis=(0, 2, 3)) / images.std(axis=(0, 2, 3))
    torch.testing.assert_close(data.eval_x[0, :, 0, 0].double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)


def test_pool_index_maps_pool_positions_to_training_images():
    raw = _synthetic()
    data = split_and_place(raw, "holdout", 0.3333, 11, torch.device("cpu"))
    assert data.pool_index.dtype.kind in "iu"
    assert np.all(np.diff(data.pool_index) > 0)
    images = raw.train.images.astype(np.float64)
    mean = images.mean(axis=(0, 2, 3)).reshape(3, 1, 1)
    std = images.std(axis=(0, 2, 3)).reshape(3, 1, 1)
    for position in (0, 17, data.pool_index.size - 1):
        index = int(data.pool_index[position])
        assert data.pool_y[position].item() == index  # label i marks training image i
        expected = torch.from_numpy((images[index] - mean) / std).float()
        torch.testing.assert_close(data.pool_x[position], expected, rtol=1e-5, atol=1e-5)


DEVICES = [
    "cpu",
    "meta",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_splits_are_float32_on_the_requested_device(device):
    data = split_and_place(_synthetic(n=30), "holdout", 0.3333, 0, torch.device(device))
    for tensor in (data.pool_x, data.eval_x):
        assert tensor.dtype == torch.float32 and tensor.device.type == device
    for tensor in (data.pool_y, data.eval_y):
        assert tensor.dtype == torch.int64 and tensor.device.type == device
    assert data.input_shape == (3, 4, 4)


def test_digits_holdout_end_to_end(tmp_path):
    raw = load_raw("digits", str(tmp_path), download=False)
    data = split_and_place(raw, "holdout", 0.3333, 0, torch.device("cpu"))
    assert data.eval_y.shape[0] == round(0.3333 * 1797)
    assert data.pool_y.shape[0] + data.eval_y.shape[0] == 1797
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    position = 5
    index = int(data.pool_index[position])
    assert data.pool_y[position].item() == raw.train.labels[index]
