"""Models: a registry of builders ``fn(input_shape, num_classes, **params) -> Classifier``.

Every model is a ``Classifier``: ``features`` maps a batch to penultimate embeddings
and ``head`` (one ``nn.Linear``) maps those to class scores, so pool outputs such as
embeddings come from the same forward pass as the logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from strategies.registry import Interval, OneOf, Registry

MODELS = Registry("model", n_inputs=2)


def register(name: str, constraints: dict | None = None):
    def wrap(fn):
        return MODELS.add(name, fn, constraints)

    return wrap


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, params: dict, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    return MODELS.get(name).fn(tuple(input_shape), num_classes, **params)


# --- ResNet-18, CIFAR variant -----------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register("resnet18", {"width": Interval(1, integer=True)})
def resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> Classifier:
    """ResNet-18 for small images: 3x3 stem, no max-pool; widths w, 2w, 4w, 8w (16 = authors' code, 64 = common)."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs image input [C, H, W], got shape {input_shape}")
    stem = [nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    blocks, c_in = [], width
    for stage, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2**stage
        blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    features = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(features, nn.Linear(c_in, num_classes))


# --- MLP and logistic regression ---------------------------------------------------


@register(
    "mlp",
    {"activation": OneOf("tanh", "relu"), "width": Interval(1, integer=True), "depth": Interval(1, integer=True)},
)
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    activation: str = "tanh",
    bias: bool = True,
    width: int = 100,
    depth: int = 3,
) -> Classifier:
    """Multi-layer perceptron: `depth` hidden layers of `width` units (paper: 3 x 100, tanh)."""
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = [nn.Flatten()]
    n_in = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(n_in, width, bias=bias), act()]
        n_in = width
    return Classifier(nn.Sequential(*layers), nn.Linear(n_in, num_classes, bias=bias))


@register("logreg")
def logreg(input_shape: tuple[int, ...], num_classes: int, bias: bool = True) -> Classifier:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return Classifier(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=bias))
