"""The acquisition strategies beyond random and margin (strategies/acquisition.py), and the
pool outputs the engine computes for them (engine/compute/scoring.py): each strategy's defining
property on small constructed inputs, and the memory rules (declared outputs only; no
second copy of the pool; no N x C x D gradient matrix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from engine.compute.data import Data
from engine.compute.models import build_model
from engine.compute.scoring import pool_outputs
from engine.compute.train import LOCAL
from engine.errors import ConfigError
from engine.schema.config import build
from engine.trial.driver import Driver
from engine.trial.loop import acquire
from engine.trial.session import start_trial
from engine.trial.setup import load_data
from strategies import acquisition
from strategies.acquisition import ACQUISITION_STRATEGIES, PoolOutputs, check_positions

CPU = torch.device("cpu")


def pick(name, outputs, k, seed=0, **params):
    entry = ACQUISITION_STRATEGIES.get(name)
    params = entry.resolve(params, "acquisition strategy")
    return check_positions(name, entry.fn(outputs, k, np.random.default_rng(seed), **params), k, outputs.n).tolist()


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any torch operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


# --- entropy and least confidence --------------------------------------------------------------


def test_entropy_picks_the_highest_entropy_over_all_classes():
    third = 1 / 3
    probs = torch.tensor(
        [
            [1.00, 0.00, 0.00],  # 0: H = 0
            [0.45, 0.45, 0.10],  # 1: H = 0.948 (margin's first choice: gap 0)
            [third, third, third],  # 2: H = ln 3 = 1.0986
            [0.80, 0.10, 0.10],  # 3: H = 0.639
            [0.50, 0.25, 0.25],  # 4: H = 1.0397
            [third, third, third],  # 5: ties with 2
        ]
    )
    outputs = PoolOutputs(6, probs=probs)
    assert pick("entropy", outputs, 3) == [2, 5, 4]
    assert pick("entropy", outputs, 5) == [2, 5, 4, 1, 3]
    assert pick("margin", outputs, 1) == [1]  # the two rules disagree on purpose
    expected = -(probs * probs.clamp_min(1e-30).log()).sum(1)
    assert pick("entropy", outputs, 6) == torch.sort(expected.double(), descending=True, stable=True).indices.tolist()


def test_least_confidence_picks_the_lowest_top_probability():
    probs = torch.tensor(
        [
            [0.50, 0.50, 0.00, 0.00],  # 0: top 0.50, H = 0.693
            [0.55, 0.15, 0.15, 0.15],  # 1: top 0.55, H = 1.18 (entropy's first choice)
            [0.90, 0.05, 0.05, 0.00],  # 2: top 0.90
            [0.40, 0.40, 0.20, 0.00],  # 3: top 0.40, H = 1.055
            [0.50, 0.30, 0.20, 0.00],  # 4: top 0.50, ties with 0
        ]
    )
    outputs = PoolOutputs(5, probs=probs)
    assert pick("least_confidence", outputs, 1) == [3]
    assert pick("least_confidence", outputs, 4) == [3, 0, 4, 1]
    assert pick("entropy", outputs, 1) == [1]


# --- BALD ---------------------------------------------------------------------------------------


def test_bald_picks_disagreement_between_passes_not_uncertainty():
    mc_probs = torch.tensor(
        [
            # T = 2 passes over N = 4 samples, C = 2
            [[0.5, 0.5], [1.0, 0.0], [0.9, 0.1], [1.0, 0.0]],
            [[0.5, 0.5], [0.0, 1.0], [0.1, 0.9], [1.0, 0.0]],
        ]
    )
    # Sample 0: both passes unsure and agreeing -> I = 0 (yet the highest entropy of the mean).
    # Sample 1: confident passes that disagree -> I = ln 2.  Sample 2: I = ln 2 - H(0.9).
    outputs = PoolOutputs(4, mc_probs=mc_probs)
    assert pick("bald", outputs, 2) == [1, 2]
    assert pick("bald", outputs, 4) == [1, 2, 0, 3]  # 0 and 3 tie at exactly 0: pool order
    mean = mc_probs.mean(0)
    assert pick("entropy", PoolOutputs(4, probs=mean), 1) == [0]


def test_bald_scores_are_the_mutual_information():
    g = torch.Generator().manual_seed(0)
    mc_probs = torch.softmax(torch.randn(7, 50, 4, generator=g) * 2, dim=2)
    p = mc_probs.double()
    mutual = -(p.mean(0) * p.mean(0).log()).sum(1) + (p * p.log()).sum(2).mean(0)
    expected = torch.sort(mutual, descending=True, stable=True).indices[:9].tolist()
    assert pick("bald", PoolOutputs(50, mc_probs=mc_probs), 9, mc_samples=7) == expected


def test_bald_needs_dropout_and_says_so():
    with pytest.raises(ConfigError) as info:
        build(sets=["acquisition.name=bald"])
    message = str(info.value)
    assert "'bald'" in message and "model.dropout" in message and "\n" not in message
    with pytest.raises(ConfigError, match="logreg has no dropout"):
        build(sets=["acquisition.name=bald", "model.name=logreg"])
    cfg = build(sets=["acquisition.name=bald", "model.dropout=0.2"])
    assert cfg.acquisition.params() == {"mc_samples": 20}
    with pytest.raises(ConfigError, match=r"The 'mc_samples' parameter of bald must be an int >= 2\. Got 1\."):
        build(sets=["acquisition={name: bald, mc_samples: 1}", "model.dropout=0.2"])


def test_a_strategy_declaring_mc_probs_needs_mc_samples(monkeypatch):
    monkeypatch.setattr(ACQUISITION_STRATEGIES, "_entries", dict(ACQUISITION_STRATEGIES._entries))
    with pytest.raises(TypeError, match="mc_samples"):

        @acquisition.register("ws_test_no_samples", needs=("mc_probs",))
        def no_samples(outputs, k, rng):
            return []

    assert "ws_test_no_samples" not in ACQUISITION_STRATEGIES


# --- BADGE ----------------------------------------------------------------------------------------


def badge_reference(probs: np.ndarray, h: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """BADGE with the N x (C*D) gradient embeddings built explicitly (the definition)."""
    a = probs.astype(np.float64).copy()
    a[np.arange(len(a)), a.argmax(1)] -= 1
    g = np.einsum("nc,nd->ncd", a, h.astype(np.float64)).reshape(len(a), -1)
    picked = [int(np.argmax((g**2).sum(1)))]
    nearest = ((g - g[picked[0]]) ** 2).sum(1)
    nearest[picked] = 0
    while len(picked) < k:
        cumulative = np.cumsum(nearest)
        j = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        picked.append(j)
        nearest = np.minimum(nearest, ((g - g[j]) ** 2).sum(1))
        nearest[picked] = 0
    return picked


def test_badge_starts_at_the_largest_gradient_then_samples_by_squared_distance():
    # Samples 0-3 have the same gradient embedding, the largest; sample 4 another one.
    probs = torch.tensor([[0.6, 0.4]] * 4 + [[0.9, 0.1]])
    h = torch.tensor([[2.0, 0.0]] * 4 + [[0.0, 1.0]])
    outputs = PoolOutputs(5, probs=probs, embeddings=h)
    for seed in range(5):
        # After the first center (the lowest of the tied largest), only sample 4 has D² > 0.
        assert pick("badge", outputs, 2, seed=seed) == [0, 4]
        # Then every D² is 0: the third pick is uniform among the remaining duplicates.
        third = pick("badge", outputs, 3, seed=seed)
        assert third[:2] == [0, 4] and third[2] in (1, 2, 3)


def test_badge_gradient_embedding_is_p_minus_onehot_of_the_prediction():
    # Same embeddings, predictions of different confidence: a confident prediction has a
    # small gradient (p - onehot ~ 0), so the least confident sample is the first center.
    probs = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95]])
    h = torch.ones(4, 3)
    assert pick("badge", PoolOutputs(4, probs=probs, embeddings=h), 1) == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_badge_equals_the_explicit_gradient_embedding_definition(seed):
    g = torch.Generator().manual_seed(seed)
    n, c, d = 60, 4, 5
    probs = torch.softmax(torch.randn(n, c, generator=g) * 2, dim=1)
    h = torch.randn(n, d, generator=g)
    expected = badge_reference(probs.numpy(), h.numpy(), 12, np.random.default_rng(seed))
    assert pick("badge", PoolOutputs(n, probs=probs, embeddings=h), 12, seed=seed) == expected


def test_badge_memory_grows_with_n_times_c_plus_d():
    n, c, d = 1000, 10, 64
    g = torch.Generator().manual_seed(0)
    outputs = PoolOutputs(n, probs=torch.softmax(torch.randn(n, c, generator=g), 1), embeddings=torch.randn(n, d))
    with LargestTensor() as mode:
        picked = pick("badge", outputs, 20)
    assert len(set(picked)) == 20
    assert mode.largest <= n * max(c, d)  # an explicit gradient embedding: n * c * d = 640,000
    assert n * c * d > 8 * mode.largest


# --- Core-Set -------------------------------------------------------------------------------------


def test_coreset_is_k_center_greedy_against_the_labeled_set():
    labeled = torch.tensor([[0.0], [10.0]])
    pool = torch.tensor([[1.0], [5.0], [9.0], [20.0], [4.9]])
    outputs = PoolOutputs(5, embeddings=pool, labeled_embeddings=labeled)
    # Nearest labeled: 1, 25, 1, 100, 24.01 -> 20.0 first; then 5.0 (25 beats 24.01);
    # then 4.9 is 0.01 from 5.0, and 1.0 and 9.0 tie at 1: the lower position.
    assert pick("coreset", outputs, 1) == [3]
    assert pick("coreset", outputs, 3) == [3, 1, 0]
    assert pick("coreset", outputs, 5) == [3, 1, 0, 2, 4]
    # Without the labeled set, 5.0 and 4.9 would not both be far: the labeled set matters.
    moved = PoolOutputs(5, embeddings=pool, labeled_embeddings=torch.tensor([[5.0]]))
    assert pick("coreset", moved, 2) == [3, 0]


def coreset_reference(pool: np.ndarray, labeled: np.ndarray, k: int) -> list[int]:
    d2 = ((pool[:, None, :] - labeled[None, :, :]) ** 2).sum(2).min(1)
    picked = []
    for _ in range(k):
        j = int(np.argmax(d2))
        picked.append(j)
        d2 = np.minimum(d2, ((pool - pool[j]) ** 2).sum(1))
        d2[picked] = -1
    return picked


def test_coreset_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(3)
    pool, labeled = torch.randn(300, 6, generator=g), torch.randn(40, 6, generator=g)
    expected = coreset_reference(pool.double().numpy(), labeled.double().numpy(), 15)
    assert pick("coreset", PoolOutputs(300, embeddings=pool, labeled_embeddings=labeled), 15) == expected


def test_coreset_without_a_labeled_set_starts_at_random():
    pool = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    outputs = PoolOutputs(5, embeddings=pool, labeled_embeddings=torch.empty(0, 1))
    first = int(np.random.default_rng(7).integers(5))
    picked = pick("coreset", outputs, 2, seed=7)
    assert picked[0] == first and picked[1] == (4 if first != 4 else 0)


def test_coreset_never_holds_a_pool_by_labeled_distance_matrix():
    n, n_labeled = 5000, 5000
    g = torch.Generator().manual_seed(0)
    outputs = PoolOutputs(
        n, embeddings=torch.randn(n, 4, generator=g), labeled_embeddings=torch.randn(n_labeled, 4, generator=g)
    )
    with LargestTensor() as mode:
        assert len(pick("coreset", outputs, 3)) == 3
    assert mode.largest <= acquisition.BLOCK**2 < n * n_labeled


# --- the engine: only what is declared, batched, one copy of the pool ----------------------------------


class Counter:
    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.calls += 1


def small_model(dropout: float = 0.0):
    torch.manual_seed(0)
    return build_model("mlp", {"width": 8, "depth": 2, "dropout": dropout}, (1, 4, 4), 3)


def test_pool_outputs_computes_and_keeps_only_the_declared_outputs():
    model = small_model(dropout=0.5)
    features, head = Counter(model.features), Counter(model.head)
    x = torch.randn(13, 1, 4, 4)
    positions, labeled = torch.tensor([0, 2, 3, 5, 7, 8, 9, 11, 12]), torch.tensor([1, 4, 6, 10])

    def run(needs, **kw):
        features.calls = head.calls = 0
        return pool_outputs(model, x, needs, 4, positions=positions, labeled=labeled, **kw)

    out = run(("probs",))
    assert (features.calls, head.calls) == (2, 2)  # 9 pool samples in batches of 4 (the last 1 joins)
    assert out.n == 9 and out.logits is None and out.embeddings is None
    assert out.labeled_embeddings is None and out.mc_probs is None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(out.probs, torch.softmax(model(x[positions]), 1))

    out = run(("labeled_embeddings",))
    assert (features.calls, head.calls) == (1, 0)  # the labeled set only, no head, no pool pass
    assert out.probs is None and out.embeddings is None and out.mc_probs is None
    with torch.no_grad():
        torch.testing.assert_close(out.labeled_embeddings, model.features(x[labeled]))

    out = run(("mc_probs",), mc_samples=5, seed=1)
    assert (features.calls, head.calls) == (10, 10)  # 2 batches x 5 passes, no eval-mode pass
    assert out.probs is None and out.labeled_embeddings is None
    assert out.mc_probs.shape == (5, 9, 3)

    out = run(())
    assert (features.calls, head.calls) == (0, 0)
    assert out.n == 9 and all(v is None for v in (out.probs, out.logits, out.embeddings, out.mc_probs))


def test_mc_probs_are_dropout_passes_with_everything_else_in_eval_mode():
    model = small_model(dropout=0.5)
    model.train()  # left in any mode by the caller: scoring sets its own
    x = torch.randn(10, 1, 4, 4)
    state = torch.random.get_rng_state()
    out = pool_outputs(model, x, ("mc_probs", "probs"), 4, mc_samples=6, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert not model.training and not any(m.training for m in model.modules())
    torch.testing.assert_close(out.mc_probs.sum(2), torch.ones(6, 10))
    assert not torch.equal(out.mc_probs[0], out.mc_probs[1])  # masks differ between passes
    assert not torch.allclose(out.mc_probs.mean(0), out.probs)  # eval-mode probabilities are another thing
    again = pool_outputs(model, x, ("mc_probs",), 4, mc_samples=6, seed=3)
    assert torch.equal(again.mc_probs, out.mc_probs)  # seeded
    other = pool_outputs(model, x, ("mc_probs",), 4, mc_samples=6, seed=4)
    assert not torch.equal(other.mc_probs, out.mc_probs)
    with pytest.raises(ConfigError, match="model.dropout"):
        pool_outputs(small_model(0.0), x, ("mc_probs",), 4, mc_samples=2)


def test_scoring_gathers_the_pool_batch_by_batch():
    """The engine's acquire() never materialises the unlabeled pool's inputs (a second copy of
    the pool, about 12 GB for a million CIFAR images): the largest tensor it makes is a batch."""
    cfg = build(sets=["device=cpu", "acquisition.name=margin", "model.width=8", "eval.batch_size=128"])
    n = 4000
    g = torch.Generator().manual_seed(0)
    data = Data(
        pool_x=torch.randn(n, 3, 16, 16, generator=g),
        pool_y=torch.randint(0, 10, (n,), generator=g),
        eval_x=torch.zeros(0, 3, 16, 16),
        eval_y=torch.zeros(0, dtype=torch.int64),
        pool_index=np.arange(n),
        num_classes=10,
    )
    model = build_model("mlp", {"width": 8}, (3, 16, 16), 10)
    labeled = np.zeros(n, dtype=np.int32)
    labeled[:500] = 1
    with LargestTensor() as mode:
        picked, _ = acquire(cfg, model, data, labeled, 50, 2, LOCAL)
    assert len(set(picked.tolist())) == 50 and picked.min() >= 500
    sample = 3 * 16 * 16
    assert mode.largest <= 128 * sample  # one batch of inputs
    assert mode.largest < data.pool_x.numel() / 20


def test_labeled_embeddings_in_a_trial_are_those_of_the_labeled_set(monkeypatch):
    """Wired through acquire(): a spy strategy sees the embeddings of exactly the labeled samples."""
    monkeypatch.setattr(ACQUISITION_STRATEGIES, "_entries", dict(ACQUISITION_STRATEGIES._entries))
    seen = {}

    @acquisition.register("ws_test_spy", needs=("embeddings", "labeled_embeddings"))
    def spy(outputs, k, rng):
        seen["outputs"] = outputs
        return list(range(k))

    cfg = build(sets=["device=cpu", "acquisition.name=ws_test_spy", "model.width=8"])
    data = load_data(cfg, CPU)
    model = build_model("mlp", {"width": 8}, data.input_shape, 10)
    labeled = np.zeros(data.pool_y.shape[0], dtype=np.int32)
    labeled[[5, 1, 9, 300]] = 1
    acquire(cfg, model, data, labeled, 3, 2, LOCAL)
    outputs = seen["outputs"]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(outputs.labeled_embeddings, model.features(data.pool_x[[1, 5, 9, 300]]))
        unlabeled = np.flatnonzero(labeled == 0)
        torch.testing.assert_close(outputs.embeddings, model.features(data.pool_x[unlabeled]))


# --- end to end ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "sets",
    [
        ["acquisition.name=entropy"],
        ["acquisition.name=least_confidence"],
        ["acquisition.name=badge"],
        ["acquisition.name=coreset"],
        ["acquisition={name: bald, mc_samples: 4}", "model.dropout=0.2"],
    ],
    ids=lambda s: s[0].split("=")[1],
)
def test_each_strategy_runs_a_trial_deterministically(sets):
    base = ["device=cpu", "model.width=16", "rounds.initial=60", "rounds.per_round=40", "rounds.max_rounds=3"]
    cfg = build(sets=[*base, "convergence.max_epochs=3", *sets])
    data = load_data(cfg, CPU)
    with Driver([start_trial(cfg, None, device=CPU)]) as one, Driver([start_trial(cfg, None, device=CPU)]) as two:
        first, second = one.run(), two.run()
    assert [len(r["acquired"]) for r in first] == [60, 40, 40]
    acquired = [i for r in first for i in r["acquired"]]
    assert len(set(acquired)) == 140 and set(acquired) <= set(data.pool_index.tolist())
    assert [r["acquired"] for r in first] == [r["acquired"] for r in second]
    assert [r["test_acc"] for r in first] == [r["test_acc"] for r in second]
    assert all(math.isfinite(r["test_acc"]) for r in first)


# --- where the outputs live: on the device, and on the CPU for a user's strategy ----------------


class RecordingOutputs(PoolOutputs):
    """PoolOutputs that records every device they are moved to."""

    moves: list

    def to(self, device):
        self.moves.append(str(device))
        return super().to(device)


def recording(n=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = RecordingOutputs(n, probs=torch.softmax(torch.randn(n, classes, generator=g), 1))
    out.moves = []
    return out


def test_every_builtin_strategy_ranks_on_the_device():
    assert all(ACQUISITION_STRATEGIES.get(name).extra["on_device"] for name in ACQUISITION_STRATEGIES.names())


def test_a_builtin_gets_its_outputs_where_they_are_and_a_user_strategy_on_the_cpu(monkeypatch):
    monkeypatch.setattr(ACQUISITION_STRATEGIES, "_entries", dict(ACQUISITION_STRATEGIES._entries))
    seen = {}

    @acquisition.register("user_numpy_margin", needs=("probs",))  # no on_device: a user's strategy
    def user(outputs, k, rng):
        seen["device"] = outputs.probs.device
        probs = outputs.probs.numpy()  # works: a user's strategy gets CPU tensors
        top2 = np.sort(probs, axis=1)[:, -2:]
        return np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:k]

    outputs = recording()
    builtin = acquisition.pick("margin", outputs, 2, np.random.default_rng(0), {})
    assert outputs.moves == []  # nothing moved for a built-in
    picked = acquisition.pick("user_numpy_margin", outputs, 2, np.random.default_rng(0), {})
    assert outputs.moves == ["cpu"] and seen["device"] == CPU
    assert picked.dtype == np.int64 and picked.tolist() == builtin.tolist()


def test_random_picks_are_todays_numpy_picks():
    """``random`` keeps its NumPy generator seeded per (seed, round): the same picks as before."""
    out = acquisition.pick("random", PoolOutputs(1000), 50, np.random.default_rng(7), {})
    assert out.tolist() == np.random.default_rng(7).choice(1000, 50, replace=False).tolist()


def test_pool_outputs_stay_on_the_scoring_device():
    torch.manual_seed(0)
    model = build_model("mlp", {"width": 8}, (1, 4, 4), 3)
    x = torch.randn(20, 1, 4, 4)
    out = pool_outputs(model, x, ("probs", "embeddings", "labeled_embeddings"), 8, labeled=torch.arange(5))
    assert out.probs.device == x.device and out.embeddings.device == x.device
    moved = out.to("cpu")
    assert all(torch.equal(getattr(moved, k), getattr(out, k)) for k in ("probs", "embeddings", "labeled_embeddings"))
    assert moved.logits is None and moved.n == 20
