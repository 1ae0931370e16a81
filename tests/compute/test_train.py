"""engine/compute/train.py: training to convergence, batches, BatchNorm re-estimation, evaluation, seeds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.compute.models import build_model
from engine.compute.train import (
    LOCAL,
    Comm,
    LocalComm,
    batches,
    batchnorm_layers,
    evaluate,
    fit,
    make_optimizer,
    precise_bn,
    seed_for,
)


def convergence(train_acc=0.99, patience=None, min_delta=0.0, max_epochs=50):
    """The config section ``fit`` reads."""
    return SimpleNamespace(train_acc=train_acc, patience=patience, min_delta=min_delta, max_epochs=max_epochs)


def separable(n=96, seed=0):
    """Two well-separated classes a linear model fits perfectly: [n, 1, 2, 2] inputs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 2, 2, generator=g) * 0.1
    x[:, 0, 0, 0] += torch.where(y == 1, 3.0, -3.0)
    return x, y


def random_labels(n=120, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def logreg(shape=(1, 2, 2), classes=2, seed=0):
    torch.manual_seed(seed)
    return build_model("logreg", {}, shape, classes)


# --- stopping ----------------------------------------------------------------------


def test_stops_at_the_first_epoch_reaching_the_threshold():
    x, y = separable()
    model = logreg()
    accs = []
    stats = fit(
        model,
        x,
        y,
        make_optimizer(model, "adam", 0.05, 0.0, 0.9),
        16,
        convergence(train_acc=0.99, max_epochs=100),
        seed=1,
        on_epoch=lambda epoch, acc, loss: accs.append((epoch, acc, loss)),
    )
    assert stats.stop_reason == "threshold"
    assert stats.epochs == len(accs) < 100
    assert [e for e, _, _ in accs] == list(range(1, stats.epochs + 1))
    assert accs[-1][1] >= 0.99 and stats.train_acc == accs[-1][1]
    assert all(acc < 0.99 for _, acc, _ in accs[:-1])  # not one epoch later
    assert stats.train_loss == accs[-1][2]


def test_threshold_one_needs_every_sample_right():
    x, y = separable()
    model = logreg()
    stats = fit(model, x, y, make_optimizer(model, "adam", 0.05, 0.0, 0.9), 16, convergence(1.0, max_epochs=200), 1)
    assert stats.stop_reason == "threshold" and stats.train_acc == 1.0


def test_plateau_with_patience_on_data_a_model_cannot_fit():
    x, y = random_labels()
    model = logreg((1, 4, 4), 10)
    accs = []
    patience = 3
    stats = fit(
        model,
        x,
        y,
        make_optimizer(model, "adam", 1e-5, 0.0, 0.9),
        32,
        convergence(train_acc=0.99, patience=patience, min_delta=0.5, max_epochs=100),
        seed=0,
        on_epoch=lambda epoch, acc, loss: accs.append(acc),
    )
    # No epoch can improve on the first by more than 0.5 (it starts near 0.1 and cannot reach 0.6):
    # the best is set at epoch 1, then `patience` epochs without improvement.
    assert stats.stop_reason == "plateau"
    assert stats.epochs == patience + 1 == len(accs)
    assert max(accs) < 0.5


def _expected_plateau_epoch(accs, patience, min_delta):
    best, since = -math.inf, 0
    for epoch, acc in enumerate(accs, 1):
        if acc > best + min_delta:
            best, since = acc, 0
        else:
            since += 1
            if since >= patience:
                return epoch
    return None


def test_plateau_follows_the_improvement_rule():
    """Improvements reset the patience counter: the stop epoch follows from the accuracies."""
    x, y = random_labels(n=200, seed=1)
    torch.manual_seed(0)
    model = build_model("mlp", {"width": 32}, (1, 4, 4), 10)
    accs = []
    stats = fit(
        model,
        x,
        y,
        make_optimizer(model, "adam", 3e-3, 0.0, 0.9),
        50,
        convergence(train_acc=0.99, patience=2, min_delta=0.01, max_epochs=60),
        seed=0,
        on_epoch=lambda epoch, acc, loss: accs.append(acc),
    )
    assert stats.stop_reason == "plateau"
    assert stats.epochs == _expected_plateau_epoch(accs, 2, 0.01) == len(accs)
    assert stats.epochs > 3  # improvements happened and reset the counter


def test_epoch_accuracy_and_loss_are_means_over_all_samples():
    """With lr 0 the model stays fixed, so the epoch's running accuracy and mean loss must equal
    an evaluation on the same data, whatever the (unequal) batch sizes: 16, 16, 17."""
    x, y = random_labels(n=49, seed=4)
    model = logreg((1, 4, 4), 10)
    stats = fit(model, x, y, make_optimizer(model, "sgd", 0.0, 0.0, 0.0), 16, convergence(max_epochs=1), seed=0)
    acc, loss = evaluate(model, x, y, batch_size=49)
    assert stats.steps == 3 and stats.stop_reason == "max_epochs"
    assert stats.train_acc == pytest.approx(acc, abs=1e-6)
    assert 0 < acc < 0.99
    assert stats.train_loss == pytest.approx(loss, rel=1e-5)


def test_max_epochs_when_nothing_else_stops():
    # Every input appears twice with two different labels: at most half can be right.
    x, y = random_labels(n=60)
    x, y = torch.cat([x, x]), torch.cat([y, (y + 1) % 10])
    model = logreg((1, 4, 4), 10)
    accs = []
    stats = fit(
        model,
        x,
        y,
        make_optimizer(model, "sgd", 0.1, 0.0, 0.9),
        32,
        convergence(train_acc=0.99, patience=None, max_epochs=4),
        seed=0,
        on_epoch=lambda epoch, acc, loss: accs.append(acc),
    )
    assert stats.stop_reason == "max_epochs"
    assert stats.epochs == 4 == len(accs)
    assert stats.train_acc == accs[-1] <= 0.5


@pytest.mark.parametrize(
    ("n", "batch_size", "per_epoch"),
    [(128, 32, 4), (129, 64, 2), (130, 64, 3), (20, 128, 1), (33, 32, 1)],
)
def test_steps_are_epochs_times_batches(n, batch_size, per_epoch):
    x, y = random_labels(n=(n + 1) // 2)
    x, y = torch.cat([x, x])[:n], torch.cat([y, (y + 1) % 10])[:n]  # contradictory labels: runs to max_epochs
    model = logreg((1, 4, 4), 10)
    optimizer = make_optimizer(model, "sgd", 1e-4, 0.0, 0.0)
    stats = fit(model, x, y, optimizer, batch_size, convergence(train_acc=1.0, max_epochs=3), seed=0)
    assert len(list(batches(n, batch_size))) == per_epoch
    assert stats.steps == 3 * per_epoch


def test_steps_counted_when_stopping_early():
    x, y = separable()
    model = logreg()
    stats = fit(model, x, y, make_optimizer(model, "adam", 0.05, 0.0, 0.9), 40, convergence(max_epochs=100), 1)
    assert stats.stop_reason == "threshold"
    assert stats.steps == stats.epochs * 3  # 96 samples in batches of 40: 40, 40, 16


def test_fit_is_deterministic_for_a_seed():
    x, y = random_labels(n=100, seed=2)
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = build_model("mlp", {"width": 16}, (1, 4, 4), 10)
        stats = fit(model, x, y, make_optimizer(model, "adam", 1e-2, 0.0, 0.9), 16, convergence(max_epochs=3), seed)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (a, pa), (b, pb), (c, pc) = results
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(pa, pb, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(pa, pc, strict=True))  # the seed sets the shuffle


def test_make_optimizer():
    model = logreg()
    adam = make_optimizer(model, "adam", 0.003, 0.01, 0.9)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["lr"] == 0.003 and adam.param_groups[0]["weight_decay"] == 0.01
    sgd = make_optimizer(model, "sgd", 0.1, 5e-4, 0.8)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.1, 5e-4, 0.8)


# --- no host-device sync per step -------------------------------------------------------


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_no_host_sync_per_step(monkeypatch, count_host_reads, optimizer_name):
    """Reading a tensor's value on the host (item, tolist, bool, float, int) at most once per epoch.

    Adam's own CPU step counters (optimizer state, never on the accelerator) are not counted."""
    x, y = random_labels(n=128, seed=3)
    torch.manual_seed(0)
    model = build_model("mlp", {"width": 16}, (1, 4, 4), 10)
    optimizer = make_optimizer(model, optimizer_name, 1e-3, 0.0, 0.9)
    reads = count_host_reads()
    stats = fit(model, x, y, optimizer, 8, convergence(train_acc=1.0, max_epochs=3), seed=0)
    monkeypatch.undo()

    assert stats.steps == 3 * 16 and stats.epochs == 3
    state = {id(t) for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)}
    engine_reads = [name for name, tensor in reads if id(tensor) not in state]
    assert len(engine_reads) <= stats.epochs, engine_reads[:10]


# --- batches -------------------------------------------------------------------------


def as_pairs(n, size):
    return [(s.start, s.stop) for s in batches(n, size)]


def test_batches():
    assert as_pairs(10, 5) == [(0, 5), (5, 10)]
    assert as_pairs(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert as_pairs(9, 4) == [(0, 4), (4, 9)]  # a trailing batch of one joins the one before
    assert as_pairs(3, 8) == [(0, 3)]
    assert as_pairs(1, 8) == [(0, 1)]  # a single sample is still a batch
    assert as_pairs(0, 8) == []


@pytest.mark.parametrize("size", [2, 3, 7, 16, 128])
def test_batches_cover_everything_once(size):
    for n in range(0, 300, 7):
        pairs = as_pairs(n, size)
        covered = [i for start, stop in pairs for i in range(start, stop)]
        assert covered == list(range(n))
        lengths = [stop - start for start, stop in pairs]
        assert all(length == size for length in lengths[:-1])
        if len(lengths) > 1:
            assert 2 <= lengths[-1] <= size + 1


# --- BatchNorm re-estimation --------------------------------------------------------------


def test_precise_bn_is_the_cumulative_average_of_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    bn = model[1]
    bn.running_mean.fill_(5.0)  # stale statistics from earlier training
    bn.running_var.fill_(9.0)
    bn.num_batches_tracked.fill_(1000)
    x = torch.randn(10, 3) * 2 + 1
    with torch.no_grad():
        h = model[0](x)  # what the BN layer sees
    # batches(10, 4): [0:4], [4:8], [8:10]; each batch counts once, whatever its size.
    parts = [h[0:4], h[4:8], h[8:10]]
    expected_mean = torch.stack([p.mean(0) for p in parts]).mean(0)
    expected_var = torch.stack([p.var(0, unbiased=True) for p in parts]).mean(0)

    assert precise_bn(model, x, 4) is True
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.num_batches_tracked.item() == 3
    assert bn.momentum == 0.1  # restored after the pass
    # Not simply the whole set's statistics: batches are averaged with equal weight.
    assert not torch.allclose(bn.running_mean, h.mean(0), atol=1e-4)


def test_precise_bn_conv_layers_and_eval_uses_the_estimate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2, momentum=0.3))
    model[1].running_mean.fill_(-3.0)
    x = torch.randn(12, 1, 5, 5) + 2
    with torch.no_grad():
        h = model[0](x)
    parts = [h[0:6], h[6:12]]
    expected_mean = torch.stack([p.mean((0, 2, 3)) for p in parts]).mean(0)
    expected_var = torch.stack([p.var((0, 2, 3), unbiased=True) for p in parts]).mean(0)
    assert precise_bn(model, x, 6)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert model[1].momentum == 0.3
    # Eval mode then normalises with exactly these statistics.
    model.eval()
    with torch.no_grad():
        out = model(x)
    reference = F.batch_norm(h, expected_mean, expected_var, model[1].weight, model[1].bias, False, 0.0, model[1].eps)
    torch.testing.assert_close(out, reference)


def test_precise_bn_on_a_resnet_touches_every_layer():
    torch.manual_seed(0)
    model = build_model("resnet18", {"width": 4}, (1, 8, 8), 10)
    layers = batchnorm_layers(model)
    assert len(layers) == 20  # stem + 16 in blocks + 3 shortcuts
    for m in layers:
        m.running_mean.fill_(7.0)
    assert precise_bn(model, torch.randn(20, 1, 8, 8), 8)
    for m in layers:
        assert m.num_batches_tracked.item() == 3  # 8, 8, 4
        assert not torch.equal(m.running_mean, torch.full_like(m.running_mean, 7.0))


def test_precise_bn_without_batchnorm_changes_nothing():
    model = build_model("mlp", {"width": 8}, (1, 4, 4), 10)
    before = [p.detach().clone() for p in model.parameters()]
    assert precise_bn(model, torch.randn(9, 1, 4, 4), 4) is False
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


# --- evaluation ------------------------------------------------------------------------


def test_evaluate_exact_accuracy_and_loss():
    # Identity logistic regression: the predicted class is the larger input coordinate.
    model = build_model("logreg", {}, (2,), 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(2))
        model.head.bias.zero_()
    x = torch.tensor([[2.0, 0], [0, 1], [3, 1], [0, 2], [1, 0], [0, 5], [4, 0], [1, 3], [2, 1], [0, 1]])
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0, 1, 0])  # the last three are wrong
    acc, loss = evaluate(model, x, y, batch_size=3)
    assert acc == 0.7
    assert loss == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-6)
    assert evaluate(model, x[:7], y[:7], batch_size=128)[0] == 1.0


def test_evaluate_uses_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))
    model[0].running_mean.copy_(torch.tensor([100.0, -100.0]))  # eval mode: class 1 always wins
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
        model[1].bias.zero_()
    model.train()
    x = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 1.0]])
    acc, _ = evaluate(model, x, torch.ones(4, dtype=torch.long), batch_size=4)
    assert acc == 1.0
    assert not model.training
    assert torch.equal(model[0].running_mean, torch.tensor([100.0, -100.0]))  # statistics untouched


# --- seeds ---------------------------------------------------------------------------


def test_seed_for_is_stable():
    # Fixed values: a change here silently changes every published result.
    assert seed_for(0, 1, "fresh") == 4385516966543165092
    assert seed_for(0, 0, "split") == 793038145117654794
    assert seed_for(3, 7, "acquire") == seed_for(3, 7, "acquire")


def test_seed_for_differs_across_seed_round_and_purpose():
    values = {
        (seed, round_, purpose): seed_for(seed, round_, purpose)
        for seed in range(4)
        for round_ in range(6)
        for purpose in ("fresh", "train", "acquire", "split")
    }
    assert len(set(values.values())) == len(values)
    assert all(0 <= v < 2**63 for v in values.values())
    # Usable as a torch and a numpy seed.
    torch.Generator().manual_seed(max(values.values()))
    np.random.default_rng(max(values.values()))


def test_both_comms_declare_the_comm_protocol_with_its_signatures():
    import inspect

    from engine.trial.distributed import TorchComm

    methods = {"wrap", "all_reduce_sum", "broadcast", "all_gather_cat", "check_same"}
    assert Comm.__abstractmethods__ == methods
    for comm in (LocalComm, TorchComm):
        assert Comm in comm.__mro__ and not comm.__abstractmethods__
        for name in methods:  # defined by the class itself, with the protocol's parameters
            own = inspect.signature(vars(comm)[name]).parameters
            assert list(own) == list(inspect.signature(getattr(Comm, name)).parameters), (comm, name)


def test_the_local_comm_is_one_rank_that_hands_everything_back():
    assert isinstance(LOCAL, Comm) and (LOCAL.rank, LOCAL.world_size) == (0, 1)
    model, shard = nn.Linear(2, 2), torch.arange(6.0).reshape(3, 2)
    assert LOCAL.wrap(model) is model and LOCAL.all_reduce_sum(shard) is shard and LOCAL.broadcast([4]) == [4]
    assert LOCAL.all_gather_cat(shard, 3) is shard


def test_a_comm_that_leaves_out_a_collective_cannot_be_made():
    class Partial(Comm):
        rank, world_size = 0, 1

        def wrap(self, model):
            return model

    with pytest.raises(TypeError, match="abstract"):
        Partial()
