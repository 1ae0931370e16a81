"""My dataset and my model (docs/own-data.md): a generated tabular dataset and an MLP for it.

Load them with `--plugin docs/examples/my_dataset_and_model.py` (or `plugins:` in a
config or suite); then `blobs` is a dataset name and `tabular_mlp` a model name like
the built-ins.
"""

import numpy as np
from torch import nn

from engine.compute.data import RawDataset, RawSplit
from engine.compute.data import register as register_dataset
from engine.compute.models import Classifier
from engine.compute.models import register as register_model
from engine.errors import ConfigError
from engine.schema.registry import Interval


@register_dataset(
    "blobs",
    {
        "n_samples": Interval(20, integer=True),
        "n_features": Interval(1, integer=True),
        "centers": Interval(2, integer=True),
    },
)
def blobs(root, download, n_samples: int = 2000, n_features: int = 8, centers: int = 4, seed: int = 0):
    """Gaussian blobs from scikit-learn: `n_features` float features, `centers` classes, a 25% test split."""
    from sklearn.datasets import make_blobs

    # root and download are dataset.root and dataset.download: this dataset needs neither.
    x, y = make_blobs(n_samples, n_features=n_features, centers=centers, cluster_std=4.0, random_state=seed)
    x, y = x.astype(np.float32), y.astype(np.int64)  # inputs [N, F], labels [N]
    n_test = n_samples // 4
    train, test = RawSplit(x[n_test:], y[n_test:]), RawSplit(x[:n_test], y[:n_test])
    return RawDataset(train, test, num_classes=centers, normalize="per_feature")


@register_model(
    "tabular_mlp",
    {"width": Interval(1, integer=True), "depth": Interval(1, integer=True)},
    n_blocks=lambda p: p["depth"] + 1,
)
def tabular_mlp(input_shape, num_classes, width: int = 64, depth: int = 2):
    """MLP for tabular inputs [F]: `depth` x (Linear, BatchNorm1d, ReLU) of `width`, then a linear head."""
    if len(input_shape) != 1:
        raise ConfigError(f"tabular_mlp needs tabular inputs [F], got shape {list(input_shape)}.")
    layers, blocks, n_in = [], [], input_shape[0]
    for _ in range(depth):
        i = len(layers)
        blocks.append([f"features.{i}", f"features.{i + 1}"])  # the Linear and its BatchNorm
        layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.ReLU()]
        n_in = width
    return Classifier(nn.Sequential(*layers), nn.Linear(n_in, num_classes), blocks + [["head"]])
