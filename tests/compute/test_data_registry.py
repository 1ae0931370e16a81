"""engine/compute/data.py, beyond the official formats: the dataset registry and its parameters,
the generated `mnist1d` (its cache and lock), the user's `files` (.npz, .pt, Parquet,
written here) with their one-line errors, and normalisation of inputs of any shape."""

from __future__ import annotations

import inspect
import os
import random
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from engine.compute import data as data_module
from engine.compute.data import (
    DATASETS,
    DatasetError,
    RawDataset,
    RawSplit,
    input_statistics,
    load_raw,
    register,
    split_and_place,
)
from engine.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def isolated_datasets(monkeypatch):
    """Datasets a test registers vanish after it."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))


# --- the registry ------------------------------------------------------------------------


def test_builtin_datasets_are_registered_with_a_one_line_description():
    assert {"digits", "cifar10", "cifar100", "svhn", "mnist1d", "files"} <= set(DATASETS.names())
    for entry in DATASETS.entries():
        if entry.fn.__module__ == "engine.compute.data":
            assert entry.doc and "\n" not in entry.doc and entry.doc.endswith("."), entry.name


@pytest.mark.usefixtures("isolated_datasets")
def test_a_registered_loader_gets_root_download_and_its_parameters(tmp_path):
    seen = {}

    @register("toy", {"n": data_module.Interval(2, integer=True)})
    def toy(root, download, n: int = 4, scale: float = 1.0):
        """A toy dataset."""
        seen.update(root=root, download=download, n=n, scale=scale)
        x = np.arange(n * 3, dtype=np.float32).reshape(n, 3) * scale
        return RawDataset(RawSplit(x, np.arange(n) % 2), None, 2)

    assert DATASETS.get("toy").signature() == "toy(n=4, scale=1.0)"
    raw = load_raw("toy", "~/somewhere", False, {"n": 6})
    assert seen == {"root": os.path.expanduser("~/somewhere"), "download": False, "n": 6, "scale": 1.0}
    assert raw.train.inputs.shape == (6, 3)
    with pytest.raises(ConfigError, match=r"Unknown parameter 'm' for dataset 'toy'; its signature is toy\(n=4"):
        load_raw("toy", str(tmp_path), False, {"m": 1})
    with pytest.raises(ConfigError, match=r"The 'n' parameter of toy must be an int >= 2. Got 1."):
        load_raw("toy", str(tmp_path), False, {"n": 1})
    with pytest.raises(ConfigError, match=r"The 'scale' parameter of toy must be a float. Got 'x'."):
        load_raw("toy", str(tmp_path), False, {"scale": "x"})


@pytest.mark.usefixtures("isolated_datasets")
def test_a_loader_parameter_may_not_shadow_a_common_key():
    with pytest.raises(TypeError, match="'holdout' clashes with the common key 'dataset.holdout'"):

        @register("bad")
        def bad(root, download, holdout: float = 0.5):
            """Bad."""


@pytest.mark.usefixtures("isolated_datasets")
def test_the_decorator_without_parameters_still_registers():
    @data_module.dataset("old_style", "an old plugin's dataset")
    def old_style(root, download):
        return RawDataset(RawSplit(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])), None, 2)

    assert DATASETS.get("old_style").doc == "an old plugin's dataset"
    assert load_raw("old_style", "/nowhere", False).num_classes == 2


@pytest.mark.usefixtures("isolated_datasets")
@pytest.mark.parametrize(
    "raw, problem",
    [
        (RawDataset(RawSplit(np.zeros(4), np.zeros(4, np.int64)), None, 2), "at least one feature axis"),
        (RawDataset(RawSplit(np.zeros((4, 2)), np.zeros(3, np.int64)), None, 2), "4 training inputs but labels"),
        (
            RawDataset(RawSplit(np.zeros((4, 2)), np.zeros(4, np.int64)), RawSplit(np.zeros((2, 3)), np.zeros(2)), 2),
            "test inputs of shape (3,)",
        ),
        (RawDataset(RawSplit(np.zeros((4, 2)), np.zeros(4, np.int64)), None, 2, "zscore"), "normalize='zscore'"),
        ("not a dataset", "a str, not a RawDataset"),
    ],
)
def test_what_a_plugin_loader_returns_is_checked_in_one_line(raw, problem):
    register("returns")(lambda root, download: raw)
    with pytest.raises(DatasetError) as info:
        load_raw("returns", "/nowhere", False)
    assert str(info.value).startswith("Dataset 'returns' returned ") and problem in str(info.value)
    assert "\n" not in str(info.value)


# --- mnist1d -----------------------------------------------------------------------------


def test_mnist1d_parameters_are_the_packages_own_with_its_defaults():
    import mnist1d

    package = mnist1d.get_dataset_args(as_dict=True)
    ours = DATASETS.get("mnist1d").defaults
    assert ours["size"] == 10_000  # the size; the package's num_samples is 5,000
    assert {k: v for k, v in ours.items() if k != "size"} == {
        k: v for k, v in package.items() if k not in ("num_samples", "url")
    }


@pytest.mark.slow
def test_mnist1d_with_the_package_size_is_the_standard_dataset(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    raw = load_raw("mnist1d", str(tmp_path), False, {"size": 5000})
    reference = make_dataset(get_dataset_args())
    assert raw.train.inputs.shape == (4000, 1, 40) and raw.train.inputs.dtype == np.float32
    assert raw.test.inputs.shape == (1000, 1, 40) and raw.num_classes == 10
    np.testing.assert_allclose(raw.train.inputs[:, 0], reference["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(raw.train.labels, reference["y"])
    np.testing.assert_allclose(raw.test.inputs[:, 0], reference["x_test"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(raw.test.labels, reference["y_test"])
    assert raw.train.labels.dtype == np.int64 and raw.normalize == "per_channel"


@pytest.mark.slow
def test_mnist1d_default_size_and_split(tmp_path):
    raw = load_raw("mnist1d", str(tmp_path), False)
    assert raw.train.inputs.shape == (8000, 1, 40) and raw.test.inputs.shape == (2000, 1, 40)
    assert sorted(np.unique(raw.train.labels)) == list(range(10))
    assert (np.bincount(np.concatenate([raw.train.labels, raw.test.labels])) == 1000).all()


def test_mnist1d_is_cached_under_the_root_and_read_back(tmp_path, monkeypatch):
    first = load_raw("mnist1d", str(tmp_path), False, {"size": 200})
    cached = sorted(os.listdir(tmp_path / "mnist1d"))
    assert [n for n in cached if n.endswith(".npz")] == [n for n in cached if n.startswith("mnist1d-200-seed42-")]
    assert not [n for n in cached if n.startswith(".tmp")]  # the temp file was renamed
    assert (os.stat(tmp_path / "mnist1d" / cached[-1]).st_mode & 0o777) == 0o644

    def no_generation(args):
        raise AssertionError("cached: no generation")

    monkeypatch.setattr(data_module, "_generate_mnist1d", no_generation)
    again = load_raw("mnist1d", str(tmp_path), download=False, params={"size": 200})
    np.testing.assert_array_equal(first.train.inputs, again.train.inputs)
    np.testing.assert_array_equal(first.test.labels, again.test.labels)


def test_mnist1d_parameters_make_their_own_cache_file(tmp_path):
    a = load_raw("mnist1d", str(tmp_path), False, {"size": 200})
    b = load_raw("mnist1d", str(tmp_path), False, {"size": 200, "seed": 7})
    c = load_raw("mnist1d", str(tmp_path), False, {"size": 200, "iid_noise_scale": 0.1, "final_seq_length": 30})
    assert len([n for n in os.listdir(tmp_path / "mnist1d") if n.endswith(".npz")]) == 3
    assert not np.array_equal(a.train.inputs, b.train.inputs)
    assert c.train.inputs.shape == (160, 1, 30)


def test_a_corrupt_mnist1d_cache_is_made_again(tmp_path):
    first = load_raw("mnist1d", str(tmp_path), False, {"size": 100})
    (path,) = [p for p in (tmp_path / "mnist1d").iterdir() if p.suffix == ".npz"]
    path.write_bytes(b"PK\x03\x04 truncated")
    again = load_raw("mnist1d", str(tmp_path), False, {"size": 100})
    np.testing.assert_array_equal(first.train.inputs, again.train.inputs)


def test_mnist1d_generation_leaves_the_global_generators_alone(tmp_path):
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    load_raw("mnist1d", str(tmp_path), False, {"size": 100})
    assert (random.random(), np.random.rand()) == expected


def test_mnist1d_is_generated_once_by_trials_starting_together(tmp_path, monkeypatch):
    calls = []
    generate = data_module._generate_mnist1d

    def slow(args):
        calls.append(args)
        time.sleep(0.3)  # the others reach the lock meanwhile
        return generate(args)

    monkeypatch.setattr(data_module, "_generate_mnist1d", slow)
    results, errors = [], []

    def trial():
        try:
            results.append(load_raw("mnist1d", str(tmp_path), False, {"size": 100}))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=trial) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and len(calls) == 1
    for raw in results[1:]:
        np.testing.assert_array_equal(raw.train.inputs, results[0].train.inputs)


def test_mnist1d_without_a_writable_root_is_generated_with_a_warning(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot cache"):
        raw = load_raw("mnist1d", str(tmp_path / "a_file" / "root"), False, {"size": 100})
    assert raw.train.inputs.shape == (80, 1, 40)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"size": 10}, "The 'size' parameter of mnist1d must be an int >= 20. Got 10."),
        ({"train_split": 1.0}, "The 'train_split' parameter of mnist1d must be a float in (0, 1). Got 1.0."),
        ({"padding": [60, 36]}, "The 'padding' parameter of mnist1d must be a list [low, high] of two ints"),
        ({"size": 20, "train_split": 0.01}, "leave 0 of 20 samples for training"),
        ({"shuffle_seq": 1}, "The 'shuffle_seq' parameter of mnist1d must be a bool. Got 1."),
    ],
)
def test_mnist1d_refuses_bad_parameters_in_one_line(tmp_path, params, message):
    with pytest.raises(ConfigError) as info:
        load_raw("mnist1d", str(tmp_path), False, params)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- files: .npz, .pt, Parquet ----------------------------------------------------------


def _tabular(n: int = 40, features: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(n, features)).astype(np.float32)
    return x, (np.arange(n) % 3).astype(np.int64)


def _write(path, x, y, fmt: str, inputs: str = "x", labels: str = "y"):
    if fmt == "npz":
        np.savez(path, **{inputs: x, labels: y})
    elif fmt == "pt":
        torch.save({inputs: torch.from_numpy(x), labels: torch.from_numpy(y)}, path)
    else:
        frame = pd.DataFrame(x.reshape(len(x), -1), columns=[f"f{i}" for i in range(x[0].size)])
        frame[labels] = y
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("fmt", ["npz", "pt", "parquet"])
def test_files_reads_tabular_train_and_test_in_every_format(tmp_path, fmt):
    x, y = _tabular()
    xt, yt = _tabular(10, seed=1)
    train = _write(tmp_path / f"train.{fmt}", x, y, fmt)
    test = _write(tmp_path / f"test.{fmt}", xt, yt, fmt)
    raw = load_raw("files", str(tmp_path), False, {"train": train, "test": test})
    np.testing.assert_array_equal(raw.train.inputs, x)
    np.testing.assert_array_equal(raw.train.labels, y)
    np.testing.assert_array_equal(raw.test.inputs, xt)
    np.testing.assert_array_equal(raw.test.labels, yt)
    assert raw.train.inputs.dtype == np.float32 and raw.train.labels.dtype == np.int64
    assert raw.num_classes == 3 and raw.normalize == "per_channel"


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_files_keeps_uint8_images_and_their_shape(tmp_path, fmt):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 1, 8, 8), dtype=np.uint8)
    y = np.arange(12) % 4
    path = _write(tmp_path / f"images.{fmt}", x, y, fmt, inputs="pixels", labels="digit")
    raw = load_raw("files", "/nowhere", False, {"train": path, "inputs": "pixels", "labels": "digit"})
    assert raw.train.inputs.dtype == np.uint8 and raw.train.inputs.shape == (12, 1, 8, 8)
    np.testing.assert_array_equal(raw.train.inputs, x)
    assert raw.test is None and raw.num_classes == 4


def test_files_parquet_columns_rows_of_arrays_and_a_shape(tmp_path):
    x, y = _tabular(features=4)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "label": y, "id": np.arange(40)})
    frame.to_parquet(tmp_path / "t.parquet")
    path = str(tmp_path / "t.parquet")
    chosen = load_raw("files", "/", False, {"train": path, "labels": "label", "inputs": ["a", "c"]})
    np.testing.assert_array_equal(chosen.train.inputs, x[:, [0, 2]])
    everything = load_raw("files", "/", False, {"train": path, "labels": "label"})  # all but the labels
    assert everything.train.inputs.shape == (40, 5)
    # One column holding an array per row (a flattened 2x2 image), reshaped by dataset.shape.
    pd.DataFrame({"pixels": list(x), "y": y}).to_parquet(tmp_path / "rows.parquet")
    rows = load_raw("files", "/", False, {"train": str(tmp_path / "rows.parquet"), "shape": [1, 2, 2]})
    np.testing.assert_array_equal(rows.train.inputs, x.reshape(40, 1, 2, 2))


def test_files_one_feature_float_labels_and_options(tmp_path):
    np.savez(tmp_path / "one.npz", x=np.arange(6, dtype=np.float64), y=np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))
    raw = load_raw("files", "/", False, {"train": str(tmp_path / "one.npz"), "num_classes": 5, "normalize": "none"})
    assert raw.train.inputs.shape == (6, 1) and raw.train.labels.dtype == np.int64
    assert raw.num_classes == 5 and raw.normalize == "none"


def test_files_relative_paths_are_taken_from_where_warmstart_started(tmp_path, monkeypatch):
    x, y = _tabular()
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "t.npz", x, y, "npz")
    monkeypatch.chdir(tmp_path)
    assert load_raw("files", "/elsewhere", False, {"train": "data/t.npz"}).train.inputs.shape == (40, 5)
    # Ray Tune runs a trial in its own directory and records the original one.
    monkeypatch.chdir(tmp_path / "data")
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(tmp_path))
    assert load_raw("files", "/elsewhere", False, {"train": "data/t.npz"}).train.inputs.shape == (40, 5)


def _files_error(tmp_path, params) -> str:
    with pytest.raises(DatasetError) as info:
        load_raw("files", str(tmp_path), False, params)
    message = str(info.value)
    assert "\n" not in message and message.startswith("Dataset 'files': "), message
    return message


def test_files_errors_name_the_file_and_what_is_wrong(tmp_path):
    x, y = _tabular()
    good = _write(tmp_path / "good.npz", x, y, "npz")
    assert "set dataset.train" in _files_error(tmp_path, {})
    assert f"file {tmp_path / 'nope.npz'} not found." in _files_error(tmp_path, {"train": str(tmp_path / "nope.npz")})
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    assert "is not a .npz, .pt, .parquet file" in _files_error(tmp_path, {"train": str(tmp_path / "data.csv")})
    message = _files_error(tmp_path, {"train": good, "inputs": "features"})
    assert "has no array 'features' (it has 'x', 'y'); set dataset.inputs." in message
    assert "no array 'label'" in _files_error(tmp_path, {"train": good, "labels": "label"})
    assert "names one array" in _files_error(tmp_path, {"train": good, "inputs": ["x", "y"]})
    np.savez(tmp_path / "short.npz", x=x, y=y[:-1])
    assert "has 40 inputs but 39 labels." in _files_error(tmp_path, {"train": str(tmp_path / "short.npz")})
    np.savez(tmp_path / "float.npz", x=x, y=y + 0.5)
    message = _files_error(tmp_path, {"train": str(tmp_path / "float.npz")})
    assert "must be integer class indices 0..C-1, got float64 values such as 0.5." in message
    np.savez(tmp_path / "text.npz", x=x, y=np.array(["cat", "dog"] * 20))
    assert "must be integer class indices" in _files_error(tmp_path, {"train": str(tmp_path / "text.npz")})
    np.savez(tmp_path / "negative.npz", x=x, y=y - 1)
    assert "class indices >= 0, got -1" in _files_error(tmp_path, {"train": str(tmp_path / "negative.npz")})
    np.savez(tmp_path / "one_class.npz", x=x, y=np.zeros(40, np.int64))
    assert "a single class" in _files_error(tmp_path, {"train": str(tmp_path / "one_class.npz")})
    assert "a label is 2, but dataset.num_classes is 2" in _files_error(tmp_path, {"train": good, "num_classes": 2})
    bad = x.copy()
    bad[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=y)
    assert "NaN or infinite" in _files_error(tmp_path, {"train": str(tmp_path / "nan.npz")})
    np.savez(tmp_path / "empty.npz", x=x[:0], y=y[:0])
    assert "has no samples" in _files_error(tmp_path, {"train": str(tmp_path / "empty.npz")})
    assert "does not fit the 5 values per sample" in _files_error(tmp_path, {"train": good, "shape": [2, 2]})
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 6), np.float32), y=np.arange(4) % 2)
    message = _files_error(tmp_path, {"train": good, "test": str(tmp_path / "wide.npz")})
    assert "the test inputs have shape [6] per sample, the training inputs [5]." in message


def test_files_errors_for_unreadable_and_odd_files(tmp_path):
    x, y = _tabular()
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    assert "cannot read" in _files_error(tmp_path, {"train": str(tmp_path / "broken.npz")})
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    assert "cannot read" in _files_error(tmp_path, {"train": str(tmp_path / "broken.parquet")})
    torch.save([torch.from_numpy(x), torch.from_numpy(y)], tmp_path / "list.pt")
    assert "holds a list; save a dict of arrays" in _files_error(tmp_path, {"train": str(tmp_path / "list.pt")})
    frame = pd.DataFrame({"f0": x[:, 0], "city": ["a"] * 40, "y": y})
    frame.to_parquet(tmp_path / "text.parquet")
    message = _files_error(tmp_path, {"train": str(tmp_path / "text.parquet")})
    assert "column 'city'" in message and "is not numeric" in message
    message = _files_error(tmp_path, {"train": str(tmp_path / "text.parquet"), "labels": "target"})
    assert "has no column 'target' (it has 'f0', 'city', 'y'); set dataset.labels." in message
    message = _files_error(tmp_path, {"train": str(tmp_path / "text.parquet"), "inputs": ["f0", "f9"]})
    assert "has no column 'f9'" in message and "set dataset.inputs." in message


@pytest.mark.parametrize(
    "params, message",
    [
        ({"normalize": "zscore"}, "The 'normalize' parameter of files must be one of 'per_channel', 'per_feature'"),
        ({"shape": [0, 3]}, "The 'shape' parameter of files must be null or a list of ints >= 1"),
        ({"num_classes": 1}, "The 'num_classes' parameter of files must be null or an int >= 2. Got 1."),
        ({"train": 3}, "The 'train' parameter of files must be null or a str. Got 3."),
    ],
)
def test_files_refuses_bad_parameters_before_reading(params, message):
    with pytest.raises(ConfigError) as info:
        load_raw("files", "/nowhere", False, params)
    assert message in str(info.value)


# --- normalisation of inputs of any shape ----------------------------------------------------


def test_images_are_normalised_per_channel_exactly_as_before():
    """The formula the engine used for images before inputs of any shape: the same bits."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 3, 4, 4), dtype=np.uint8)
    raw = RawDataset(RawSplit(images, np.arange(50) % 10), RawSplit(images[:5], np.arange(5)), 10)
    data = split_and_place(raw, "test", 0.3333, 0, CPU)
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = images.std(axis=(0, 2, 3), dtype=np.float64) + 1e-8
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    assert torch.equal(data.pool_x, (torch.from_numpy(images).float() - m) / s)


def _standardised(x: torch.Tensor, dims) -> None:
    x = x.double()
    torch.testing.assert_close(x.mean(dim=dims), torch.zeros_like(x.mean(dim=dims)), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=dims, unbiased=False), torch.ones_like(x.mean(dim=dims)), atol=1e-4, rtol=0)


def test_tabular_inputs_are_normalised_per_feature_over_the_training_split():
    x, y = _tabular(300, features=4)
    x[:, 2] *= 100.0
    data = split_and_place(RawDataset(RawSplit(x, y), None, 3), "holdout", 0.3333, 0, CPU)
    _standardised(torch.cat([data.pool_x, data.eval_x]), 0)
    assert data.input_shape == (4,)


def test_sequences_are_normalised_per_channel():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5, 3, (200, 40)), rng.normal(-1, 0.1, (200, 40))], axis=1).astype(np.float32)
    raw = RawDataset(RawSplit(x, np.arange(200) % 10), None, 10)
    data = split_and_place(raw, "holdout", 0.5, 0, CPU)
    _standardised(torch.cat([data.pool_x, data.eval_x]), (0, 2))
    assert data.input_shape == (2, 40)


def test_per_feature_normalises_each_input_element_and_none_leaves_them():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(100, 1, 3, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = 7  # a constant pixel: 0 after normalisation, not a division by zero
    raw = RawDataset(RawSplit(images, np.arange(100) % 2), RawSplit(images[:3], np.arange(3) % 2), 2, "per_feature")
    data = split_and_place(raw, "test", 0.3333, 0, CPU)
    assert torch.all(data.pool_x[:, 0, 0, 0] == 0)
    x = data.pool_x.double()[:, 0].reshape(100, 9)[:, 1:]
    torch.testing.assert_close(x.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-4, rtol=0)
    plain = split_and_place(RawDataset(raw.train, raw.test, 2, "none"), "test", 0.3333, 0, CPU)
    assert torch.equal(plain.pool_x, torch.from_numpy(images).float())
    assert torch.equal(plain.eval_x, torch.from_numpy(images[:3]).float())


def test_input_statistics_shapes():
    x = np.ones((5, 3, 4, 4), np.uint8)
    assert [a.shape for a in input_statistics(x, "per_channel")] == [(1, 3, 1, 1)] * 2
    assert [a.shape for a in input_statistics(x, "per_feature")] == [(1, 3, 4, 4)] * 2
    assert input_statistics(x, "none") is None
    assert [a.shape for a in input_statistics(np.ones((5, 7), np.float32), "per_channel")] == [(1, 7)] * 2


def test_mnist1d_placed_for_a_trial(tmp_path):
    raw = load_raw("mnist1d", str(tmp_path), False, {"size": 300})
    data = split_and_place(raw, "test", 0.3333, 0, CPU)
    assert data.input_shape == (1, 40) and data.num_classes == 10
    assert data.pool_x.shape == (240, 1, 40) and data.eval_x.shape == (60, 1, 40)
    _standardised(data.pool_x, (0, 2))


def test_signature_of_the_files_loader_is_documented_in_its_comment():
    source = inspect.getsource(data_module.load_files)
    for param in DATASETS.get("files").defaults:
        assert param in source.split('"""')[2], param  # the comment under the docstring explains it
