"""engine/compute/models.py: the CIFAR ResNet-18, the MLP, logistic regression, the MNIST-1D conv net, and the model registry."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from engine.compute.models import MODELS, BasicBlock, Classifier, StridedPointwise, build_model
from engine.errors import ConfigError
from engine.schema.catalogue import model_spec
from engine.schema.config import build


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def block_channels(model: Classifier) -> list[int]:
    return [block.conv2.out_channels for block in model.modules() if isinstance(block, BasicBlock)]


# --- ResNet-18, CIFAR variant -----------------------------------------------------------


def test_resnet18_has_a_cifar_stem_and_no_max_pool():
    model = build_model("resnet18", {}, (3, 32, 32), 10)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 3 and stem.out_channels == 16
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.padding == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # 32x32 in, three stride-2 stages: a 4x4 map reaches the global pool (an ImageNet stem would give 1x1).
    seen = {}
    pool = next(m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d))

    def record(module, inputs, output):
        seen["shape"] = tuple(inputs[0].shape)

    pool.register_forward_hook(record)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))
    assert seen["shape"] == (2, 128, 4, 4)


def test_resnet18_width_16_is_the_authors_network():
    model = build_model("resnet18", {"width": 16}, (3, 32, 32), 10)
    assert block_channels(model) == [16, 16, 32, 32, 64, 64, 128, 128]  # 4 stages x 2 basic blocks
    assert model.head.in_features == 128 and model.head.out_features == 10
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 17


def test_resnet18_width_64_is_the_common_network():
    model = build_model("resnet18", {"width": 64}, (3, 32, 32), 10)
    assert block_channels(model) == [64, 64, 128, 128, 256, 256, 512, 512]
    assert model.head.in_features == 512
    assert n_params(model) == 11_173_962  # the usual CIFAR ResNet-18: about 11.2M
    # The default width is 16 (the authors' code).
    assert n_params(build_model("resnet18", {}, (3, 32, 32), 10)) < n_params(model) / 10


def test_resnet18_class_count_and_input_channels_come_from_the_dataset():
    model = build_model("resnet18", {"width": 8}, (1, 8, 8), 100)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1 and stem.out_channels == 8
    assert model.head.out_features == 100


# --- MLP and logistic regression ------------------------------------------------------


def test_mlp_defaults_are_three_tanh_layers_of_100():
    model = build_model("mlp", {}, (1, 8, 8), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 100), (100, 100), (100, 100), (100, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert all(m.bias is not None for m in linears)
    assert n_params(model) == 64 * 100 + 100 + 2 * (100 * 100 + 100) + 100 * 10 + 10


def test_mlp_relu():
    model = build_model("mlp", {"activation": "relu"}, (3, 32, 32), 10)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Tanh) for m in model.modules())
    assert next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features == 3 * 32 * 32


def test_mlp_without_bias_has_no_bias_anywhere():
    model = build_model("mlp", {"bias": False}, (1, 8, 8), 10)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert not any("bias" in name for name, _ in model.named_parameters())
    assert n_params(model) == 64 * 100 + 2 * 100 * 100 + 100 * 10
    # Zero input gives exactly zero scores when nothing adds an offset (tanh(0) = 0).
    assert torch.equal(model(torch.zeros(3, 1, 8, 8)), torch.zeros(3, 10))


def test_mlp_width_and_depth():
    model = build_model("mlp", {"width": 7, "depth": 2}, (1, 8, 8), 4)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 7), (7, 7), (7, 4)]


def test_logreg_is_one_linear_layer():
    model = build_model("logreg", {}, (3, 32, 32), 100)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0] is model.head
    assert (model.head.in_features, model.head.out_features) == (3072, 100)
    assert n_params(model) == 3072 * 100 + 100
    assert n_params(build_model("logreg", {"bias": False}, (1, 8, 8), 10)) == 640


@pytest.mark.parametrize("shape", [(40,), (1, 40), (3, 4, 4), (2, 3, 4, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_mlp_and_logreg_flatten_any_input_shape(name, shape):
    model = build_model(name, {}, shape, 3)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.in_features == math.prod(shape)
    x = torch.randn(4, *shape)
    torch.testing.assert_close(model(x), model(x.reshape(4, -1).reshape(4, *shape)))
    assert model(x).shape == (4, 3)


# --- cnn1d, the MNIST-1D paper's conv net ------------------------------------------------


def test_cnn1d_is_the_mnist1d_papers_convbase():
    """Greydanus (2020), ConvBase: Conv1d(1, 25, 5, stride 2, padding 1), then two
    Conv1d(25, 25, 3, stride 2, padding 1), ReLU after each, a linear head on the flat
    25 x 5 features of a length-40 sequence: 5,210 parameters."""
    model = build_model("cnn1d", {}, (1, 40), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 25, (5,), (2,), (1,)),
        (25, 25, (3,), (2,), (1,)),
        (25, 25, (3,), (2,), (1,)),
    ]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    assert (model.head.in_features, model.head.out_features) == (125, 10)
    assert n_params(model) == 5210
    x = torch.randn(6, 1, 40)
    h = x
    for conv in convs:
        h = torch.relu(conv(h))
    torch.testing.assert_close(model(x), model.head(h.flatten(1)))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_cnn1d_blocks_are_its_conv_layers_then_the_head():
    model = build_model("cnn1d", {"depth": 2, "channels": 8}, (1, 40), 10)
    assert model.blocks == (("features.0",), ("features.2",), ("head",))
    state = model.state_dict()
    owned = [k for k in state if any(k.startswith(name + ".") for block in model.blocks for name in block)]
    assert sorted(owned) == sorted(state)  # every parameter and buffer belongs to a block
    assert model_spec("cnn1d", {"depth": 2, "channels": 8, "dropout": 0.0}).n_blocks == 3
    assert build(sets=["model=cnn1d", "dataset=mnist1d", "init=warm_partial"]).init.blocks is None


def test_cnn1d_inputs_channels_lengths_and_dropout():
    several = build_model("cnn1d", {"channels": 4}, (3, 64), 5)
    assert next(m for m in several.modules() if isinstance(m, nn.Conv1d)).in_channels == 3
    assert several(torch.randn(2, 3, 64)).shape == (2, 5)
    flat = build_model("cnn1d", {}, (40,), 10)  # tabular or flat sequences: one channel
    assert flat(torch.randn(2, 40)).shape == (2, 10) and flat.blocks[0] == ("features.1",)
    dropped = build_model("cnn1d", {"dropout": 0.2}, (1, 40), 10)
    assert sum(isinstance(m, nn.Dropout) for m in dropped.modules()) == 1
    with pytest.raises(
        ConfigError, match=r"cnn1d needs sequence inputs \[C, L\] or \[L\], but the dataset's are 1x8x8"
    ):
        build_model("cnn1d", {}, (1, 8, 8), 10)
    assert build_model("cnn1d", {"depth": 6}, (1, 8), 10).head.in_features == 25  # lengths 3, 2, 1, 1, 1, 1
    with pytest.raises(ConfigError, match="cnn1d with depth 3 needs longer sequences than 2"):
        build_model("cnn1d", {}, (1, 2), 10)


# --- the common interface -------------------------------------------------------------

SHAPES = [(1, 8, 8), (3, 32, 32)]
MODEL_CASES = [("resnet18", {"width": 4}), ("mlp", {}), ("mlp", {"activation": "relu", "bias": False}), ("logreg", {})]
SEQUENCE_CASES = [("cnn1d", {}), ("cnn1d", {"channels": 3, "depth": 1, "dropout": 0.5}), ("mlp", {}), ("logreg", {})]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("name", "params"), MODEL_CASES, ids=lambda c: str(c))
def test_output_shape_features_and_head(name, params, shape):
    torch.manual_seed(0)
    model = build_model(name, params, shape, 7)
    assert isinstance(model, Classifier)
    assert isinstance(model.head, nn.Linear)
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is model.head  # the last linear layer
    model.eval()
    x = torch.randn(5, *shape)
    with torch.no_grad():
        logits = model(x)
        embedding = model.features(x)
    assert logits.shape == (5, 7)
    assert embedding.shape == (5, model.head.in_features)  # the penultimate embedding, flat
    torch.testing.assert_close(model.head(embedding), logits, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 40), (2, 17)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("name", "params"), SEQUENCE_CASES, ids=lambda c: str(c))
def test_sequence_models_have_features_and_head(name, params, shape):
    test_output_shape_features_and_head(name, params, shape)


def test_penultimate_embedding_of_the_mlp_is_the_last_hidden_activation():
    torch.manual_seed(0)
    model = build_model("mlp", {}, (1, 8, 8), 10)
    x = torch.randn(4, 1, 8, 8)
    hidden = x.flatten(1)
    for layer in [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]:
        hidden = torch.tanh(layer(hidden))
    torch.testing.assert_close(model.features(x), hidden)
    assert model.features(x).abs().max() < 1  # tanh outputs, not the head's scores


def test_same_seed_same_initialisation():
    torch.manual_seed(3)
    a = build_model("resnet18", {"width": 4}, (1, 8, 8), 10)
    torch.manual_seed(3)
    b = build_model("resnet18", {"width": 4}, (1, 8, 8), 10)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# --- the registry --------------------------------------------------------------------


def test_registry_lists_the_models():
    for name in ("logreg", "mlp", "resnet18", "cnn1d"):
        assert name in MODELS.names()
    assert MODELS.get("cnn1d").signature() == "cnn1d(channels=25, depth=3, dropout=0.0)"


@pytest.mark.parametrize(
    ("name", "params", "signature"),
    [
        ("mlp", {"hidden": 5}, "mlp(activation='tanh', bias=True, width=100, depth=3"),
        ("resnet18", {"depth": 34}, "resnet18(width=16"),
        ("logreg", {"width": 3}, "logreg(bias=True"),
    ],
)
def test_unknown_model_parameter_shows_the_signature(name, params, signature):
    """The whole signature is in the message; it starts with the contract's parameters and defaults
    (later parameters, such as dropout, may follow)."""
    entry = MODELS.get(name)
    assert entry.signature().startswith(signature)
    with pytest.raises(ConfigError) as info:
        entry.resolve(params, "model")
    message = str(info.value)
    assert entry.signature() in message
    assert repr(next(iter(params))) in message
    assert "\n" not in message


def test_model_parameter_values_are_checked():
    entry = MODELS.get("mlp")
    defaults = entry.resolve({}, "model")
    assert {k: defaults[k] for k in ("activation", "bias", "width", "depth")} == {
        "activation": "tanh",
        "bias": True,
        "width": 100,
        "depth": 3,
    }
    assert entry.resolve({"activation": "relu", "bias": False}, "model")["activation"] == "relu"
    with pytest.raises(
        ConfigError, match=r"^The 'activation' parameter of mlp must be one of 'tanh', 'relu'\. Got 'sigmoid'\.$"
    ):
        entry.resolve({"activation": "sigmoid"}, "model")
    with pytest.raises(ConfigError, match="'bias' parameter of mlp"):
        entry.resolve({"bias": "no"}, "model")
    with pytest.raises(ConfigError, match=r"'width' parameter of resnet18 must be an int >= 1\. Got 0\."):
        MODELS.get("resnet18").resolve({"width": 0}, "model")
    with pytest.raises(ConfigError, match="'width' parameter of resnet18"):
        MODELS.get("resnet18").resolve({"width": 16.5}, "model")


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        MODELS.get("vgg16")
    assert "'vgg16'" in str(info.value)
    for name in ("logreg", "mlp", "resnet18"):
        assert name in str(info.value)


# --- oneDNN's heap corruption (torch 2.14.1 on AVX2 CPUs) -------------------------------


@pytest.mark.parametrize("c_in,stride,shape", [(4, 2, (8, 8)), (3, 2, (7, 9)), (16, 3, (8, 8))])
def test_strided_pointwise_is_a_strided_1x1_convolution(c_in, stride, shape):
    """The same function, gradient and parameters as Conv2d(c_in, c_out, 1, stride)."""
    torch.manual_seed(0)
    mine, reference = StridedPointwise(c_in, 8, stride), nn.Conv2d(c_in, 8, 1, stride, bias=False)
    reference.weight.data.copy_(mine.weight.data)
    assert mine.state_dict().keys() == reference.state_dict().keys() == {"weight"}
    x = torch.randn(5, c_in, *shape)
    mine(x).square().sum().backward()
    reference(x).square().sum().backward()
    assert torch.allclose(mine(x), reference(x), atol=1e-6)
    assert torch.allclose(mine.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_narrow_resnet18_trains_with_one_thread_in_channels_last():
    """The regression: resnet18 at width 4 with one intra-op thread (a Ray trial's default),
    channels_last or not, aborted the process in oneDNN's strided 1x1 weight gradient."""
    code = (
        "import torch; from torch import nn; torch.set_num_threads(1); torch.manual_seed(1)\n"
        "from engine.compute.models import build_model\n"
        "for fmt in (torch.contiguous_format, torch.channels_last):\n"
        "    m = build_model('resnet18', {'width': 4}, (3, 8, 8), 10).to(memory_format=fmt)\n"
        "    for n in (40, 70, 100):\n"
        "        x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))\n"
        "        for i in range(0, n, 16):\n"
        "            m.zero_grad(); nn.functional.cross_entropy(m(x[i:i+16].contiguous(memory_format=fmt)), y[i:i+16]).backward()\n"
        "print('trained')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "trained"), result.stderr[-2000:]
