"""Models: a registry of builders ``fn(input_shape, num_classes, **params) -> Classifier``.

Every model is a ``Classifier``: ``features`` maps a batch to penultimate embeddings
and ``head`` (one ``nn.Linear``) maps those to class scores, so pool outputs such as
embeddings come from the same forward pass as the logits.

A model also names its *blocks*: the consecutive groups of modules, input to output,
that layer-wise init strategies (``warm_partial``) treat as units.  Every parameter
and buffer belongs to exactly one block, and the head is always the last one:

- ``mlp``: each hidden layer (its ``Linear``; the activation and dropout have no
  state) is a block, then the head: ``depth + 1`` blocks;
- ``resnet18``: the stem (3x3 conv + BatchNorm), each of the 8 BasicBlocks, then
  the head: 10 blocks;
- ``cnn1d``: each Conv1d layer (with its ReLU) is a block, then the head:
  ``depth + 1`` blocks;
- ``logreg``: the head alone: 1 block.

Input shapes: ``mlp`` and ``logreg`` flatten any input ``[...]`` (images, sequences,
tabular features); ``resnet18`` needs images ``[C, H, W]``; ``cnn1d`` sequences
``[C, L]`` (or ``[L]``, read as one channel).  A plugin registers a model for any other
shape with ``register`` below (docs/own-data.md).

``dropout`` (mlp, resnet18, cnn1d; default 0.0 = none, and then no Dropout module exists,
so the network is exactly the one without the parameter) is what MC-dropout
acquisition (``bald``) samples from.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.errors import ConfigError
from engine.schema.catalogue import MODELS
from engine.schema.registry import Interval, OneOf


def register(
    name: str, constraints: dict | None = None, *, n_blocks=None, stackable: bool = False, override: bool = False
):
    """Register a builder; ``n_blocks(params) -> int`` says how many blocks its models have,
    so a config can be checked before any model is built (None: the model names no blocks).
    ``stackable=True`` says its models run under ``torch.func.vmap`` (no data-dependent
    Python control flow, no in-place updates of unstacked state), so a suite may train
    several trials of it as one ensemble (engine/compute/stacked.py); every built-in is."""

    def wrap(fn):
        return MODELS.add(name, fn, constraints, override=override, n_blocks=n_blocks, stackable=stackable)

    return wrap


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Linear, blocks: list[list[str]] | None = None) -> None:
        super().__init__()
        self.features = features
        self.head = head
        # Module names (as in state_dict keys) of each block, input to output; () = none named.
        # Names, not module references: SyncBatchNorm conversion replaces modules in place.
        self.blocks: tuple[tuple[str, ...], ...] = tuple(tuple(b) for b in blocks or ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, params: dict, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    return MODELS.get(name).fn(tuple(input_shape), num_classes, **params)


# --- ResNet-18, CIFAR variant -----------------------------------------------------


class StridedPointwise(nn.Conv2d):
    """A 1x1 convolution with a stride, computed as the stride's subsample followed by a 1x1
    stride-1 convolution: the same function and the same parameters (``weight``, as in a
    ``Conv2d(c_in, c_out, 1, stride)``), but not oneDNN's strided 1x1 kernel, whose CPU weight
    gradient with 2-6 input channels writes out of bounds on AVX2 CPUs (torch 2.14.1; resnet18
    at width 4 with one thread aborted the process with "corrupted double-linked list")."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, 1, bias=False)
        self.step = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, :: self.step, :: self.step])


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(StridedPointwise(c_in, c_out, stride), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


DROPOUT = Interval(0, 1, high_open=True)


@register("resnet18", {"width": Interval(1, integer=True), "dropout": DROPOUT}, n_blocks=lambda p: 10, stackable=True)
def resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 16, dropout: float = 0.0) -> Classifier:
    """ResNet-18 for small images: 3x3 stem, no max-pool; widths w, 2w, 4w, 8w (16 = authors' code, 64 = common)."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs image input [C, H, W], got shape {input_shape}")
    stem = [nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    blocks, c_in = [], width
    for stage, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2**stage
        blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    # Dropout on the pooled embedding, before the head (where MC-dropout ResNets put it).
    tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
    features = nn.Sequential(*stem, *blocks, *tail)
    names = [["features.0", "features.1"]] + [[f"features.{3 + i}"] for i in range(len(blocks))] + [["head"]]
    return Classifier(features, nn.Linear(c_in, num_classes), names)


# --- MLP and logistic regression ---------------------------------------------------


@register(
    "mlp",
    {
        "activation": OneOf("tanh", "relu"),
        "width": Interval(1, integer=True),
        "depth": Interval(1, integer=True),
        "dropout": DROPOUT,
    },
    n_blocks=lambda p: p["depth"] + 1,
    stackable=True,
)
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    activation: str = "tanh",
    bias: bool = True,
    width: int = 100,
    depth: int = 3,
    dropout: float = 0.0,
) -> Classifier:
    """Multi-layer perceptron: `depth` hidden layers of `width` units (paper: 3 x 100, tanh), dropout after each."""
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = [nn.Flatten()]
    names = []
    n_in = math.prod(input_shape)
    for _ in range(depth):
        names.append([f"features.{len(layers)}"])
        layers += [nn.Linear(n_in, width, bias=bias), act()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        n_in = width
    return Classifier(nn.Sequential(*layers), nn.Linear(n_in, num_classes, bias=bias), names + [["head"]])


@register("logreg", n_blocks=lambda p: 1, stackable=True)
def logreg(input_shape: tuple[int, ...], num_classes: int, bias: bool = True) -> Classifier:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return Classifier(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=bias), [["head"]])


# --- 1-D convolutions (MNIST-1D) --------------------------------------------------------


@register(
    "cnn1d",
    {"channels": Interval(1, integer=True), "depth": Interval(1, integer=True), "dropout": DROPOUT},
    n_blocks=lambda p: p["depth"] + 1,
    stackable=True,
)
def cnn1d(
    input_shape: tuple[int, ...], num_classes: int, channels: int = 25, depth: int = 3, dropout: float = 0.0
) -> Classifier:
    """1-D conv net of the MNIST-1D paper: `depth` Conv1d (kernel 5, then 3; stride 2) + ReLU, linear head."""
    # Greydanus (2020), "Scaling down deep learning", ConvBase: 3 layers of 25 channels;
    # on 1x40 sequences the lengths go 40 -> 19 -> 10 -> 5 and the head sees 25 x 5 = 125.
    if len(input_shape) not in (1, 2):
        shape = "x".join(map(str, input_shape))
        raise ConfigError(f"The model cnn1d needs sequence inputs [C, L] or [L], but the dataset's are {shape}.")
    layers: list[nn.Module] = [] if len(input_shape) == 2 else [nn.Unflatten(1, (1, input_shape[0]))]
    c_in, length = input_shape if len(input_shape) == 2 else (1, input_shape[0])
    names = []
    for i in range(depth):
        kernel = 5 if i == 0 else 3
        length = (length + 2 - kernel) // 2 + 1
        if length < 1:
            raise ConfigError(
                f"The model cnn1d with depth {depth} needs longer sequences than {input_shape[-1]}: "
                f"nothing is left after layer {i + 1}."
            )
        names.append([f"features.{len(layers)}"])
        layers += [nn.Conv1d(c_in, channels, kernel, stride=2, padding=1), nn.ReLU()]
        c_in = channels
    layers += [nn.Flatten()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
    return Classifier(nn.Sequential(*layers), nn.Linear(channels * length, num_classes), names + [["head"]])
