"""The engine's speed, side by side: against plain PyTorch, the paper's reference loop, a
bare forward pass, Ray, and (on a GPU) the hardware's FLOP ceiling.

    python -m benchmarks.perf [--quick] [--device cpu|cuda] [--out FILE.json]

Sections (every figure also goes to the JSON file):

engine_vs_plain      one training round, ``engine.compute.train.fit`` / a hand-written loop doing
                     the same steps (benchmarks/round_vs_plain.py).  Target <= 1.05.
engine_vs_reference  one round of the engine (labeled rows gathered from the device
                     tensor, a new optimizer, ``fit``) / the same round written like the
                     paper's public code (github.com/JordanAsh/warm_start, run.py): a
                     torchvision-style dataset of uint8 HWC images, a PIL image and a
                     per-sample ``ToTensor`` + ``Normalize`` per item, a ``DataLoader``
                     with a ``SubsetRandomSampler`` over the labeled indices, and
                     ``.item()`` on the loss and the accuracy every step.  Same initial
                     model, the same random CIFAR-sized (or digits-sized) uint8 images
                     normalised with the same statistics, labeled set, batch size (128),
                     optimizer (Adam 1e-3) and number of epochs; the step counts are
                     checked equal.  The engine's one-off placement of the data on the
                     device (once per trial, not per round) is timed and reported apart.
                     Targets: >= 3x for mlp on CPU; >= 5x for both on a GPU.
scoring              pool samples per second of ``margin`` acquisition (``engine.compute.scoring.
                     pool_outputs`` gathering each batch of the unlabeled pool by position,
                     softmax, the strategy's top-k on the device, the k picked positions to
                     the host: ``strategies.acquisition.pick``) / a bare pass over
                     the same tensors: each batch's rows gathered from the pool tensor
                     (``index_select``) and a forward under ``inference_mode``, nothing else,
                     same batch size and options.  Target >= 0.9.  Also shown: the ratio
                     to the forward pass alone, with the rows gathered off the clock (the
                     ceiling of any loop that keeps one copy of the pool).
ray_overhead         a small trial on Ray Train (1 worker) against in-process: fixed
                     start-up seconds and per-round overhead (benchmarks/ray_overhead.py).
                     Skipped with --quick.
gpu (--device cuda)  training images/s of resnet18 width 64 and width 16 (CIFAR-sized,
                     batch 128) with each ``performance`` option alone, all off, and the
                     GPU defaults (``auto``) with and without compile; the measured peak
                     bf16 matmul TFLOP/s; and the time against the FLOP-count floor
                     (training ~ 3x the forward MACs x 2 FLOP at that peak).

Every comparison is interleaved (A B, B A, ...) after a warm-up of each side, and the
figures are medians; the machine and the date are printed with the table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from benchmarks import round_vs_plain
from engine.compute.data import RawDataset, RawSplit, split_and_place
from engine.compute.models import build_model
from engine.compute.scoring import pool_outputs
from engine.compute.train import PLAIN, Performance, fit, make_optimizer, resolve_performance
from engine.schema.catalogue import ACQUISITION_STRATEGIES
from engine.schema.config import DEFAULTS
from strategies.acquisition import pick

BATCH_SIZE = 128  # the paper's
LR = 1e-3  # Adam, the paper's
NUM_CLASSES = 10
SEED = 0
TARGETS = {
    "engine_vs_plain": 1.05,  # engine / plain seconds, at most
    "reference_cpu_mlp": 3.0,  # reference / engine seconds, at least
    "reference_cuda": 5.0,
    "scoring": 0.9,  # engine / bare samples per second, at least
}
SHAPES = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}
# Forward multiply-accumulates per 32x32 image, counted by count_macs(); the issue's
# estimate for width 64 is 0.56 GMAC.  Training ~ 3x forward (backward: twice the forward).
TRAIN_OVER_FORWARD = 3


# --- timing ----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device):
    """(wall seconds, result) of ``run()``; garbage of earlier runs is collected off the clock."""
    gc.collect()
    sync(device)
    began = time.perf_counter()
    result = run()
    sync(device)
    return time.perf_counter() - began, result


def interleaved(runs: dict, repeats: int, device: torch.device, label: str, warm_up: bool = True) -> dict:
    """``repeats`` passes of timed calls of every callable in ``runs`` (name -> callable), in
    the given order on even passes and reversed on odd ones (A B, B A, ...), after one
    warm-up call of each (first calls pay allocator, oneDNN/cuDNN and loader set-up).
    Returns name -> [(seconds, result)]."""
    if warm_up:
        for run in runs.values():
            timed(run, device)
    out = {name: [] for name in runs}
    for i in range(repeats):
        for name in list(runs) if i % 2 == 0 else list(reversed(runs)):
            out[name].append(timed(runs[name], device))
        print(
            f"  {label} pass {i + 1}/{repeats}: " + " / ".join(f"{out[k][-1][0]:.3f} s" for k in runs), file=sys.stderr
        )
    return out


def seconds_summary(runs: list) -> dict:
    seconds = [s for s, _ in runs]
    return {"seconds": seconds, "median": statistics.median(seconds)}


def convergence(epochs: int) -> SimpleNamespace:
    """An unreachable threshold: ``fit`` runs exactly ``epochs`` epochs."""
    return SimpleNamespace(train_acc=1.01, patience=None, min_delta=0.0, max_epochs=epochs)


# --- the data, as the engine holds it and as the reference reads it -------------------------


def random_images(n: int, shape: tuple[int, ...], seed: int = SEED) -> RawSplit:
    """n random uint8 images [n, C, H, W] with random labels (the content does not matter)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return RawSplit(images, rng.integers(0, NUM_CLASSES, size=n).astype(np.int64))


def engine_data(split: RawSplit, device: torch.device):
    """The engine's placement (engine.compute.data.split_and_place): one normalised float tensor on
    the device.  Returns (Data, seconds it took), mean and std for the reference."""
    raw = RawDataset(split, RawSplit(split.images[:2], split.labels[:2]), NUM_CLASSES)
    seconds, data = timed(lambda: split_and_place(raw, "test", 0.3333, SEED, device), device)
    mean = split.images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = split.images.std(axis=(0, 2, 3), dtype=np.float64) + 1e-8
    return data, seconds, mean, std


class ReferenceDataset(torch.utils.data.Dataset):
    """A torchvision-style dataset: uint8 HWC images (as torchvision's CIFAR10 keeps them),
    a PIL image and the transform per sample, and the index (as the paper's wrapper returns)."""

    def __init__(self, split: RawSplit, transform) -> None:
        self.images = np.ascontiguousarray(split.images.transpose(0, 2, 3, 1))  # [N, H, W, C]
        self.labels = split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = self.images[index]
        image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return self.transform(image), int(self.labels[index]), index


def reference_transform(mean: np.ndarray, std: np.ndarray):
    from torchvision import transforms

    # ToTensor scales to [0, 1]: the engine's statistics on the 0..255 scale, divided by 255.
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(tuple(mean / 255), tuple(std / 255))])


def reference_round(model: nn.Module, dataset, labeled: np.ndarray, device: torch.device, epochs: int):
    """One round the way the paper's run.py trains: a loader over the labeled subset, a new
    optimizer, and per-step host reads of the loss and the accuracy.  Returns (steps, acc)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, sampler=torch.utils.data.SubsetRandomSampler(labeled.tolist())
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    model.train()
    steps = 0
    for _ in range(epochs):
        total_loss, correct, total = 0.0, 0, 0
        for inputs, targets, _index in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            correct += outputs.argmax(1).eq(targets).sum().item()
            total += targets.size(0)
            steps += 1
    return steps, correct / total


# --- engine vs reference ---------------------------------------------------------------------


@dataclass(frozen=True)
class RefCase:
    model: str
    params: dict
    data: str  # cifar | digits
    pool: int  # images in the pool
    n: int  # labeled (the round's training set); never 1 more than a multiple of 128
    epochs: int
    quick_n: int
    quick_epochs: int


REFERENCE_CASES = [
    RefCase("mlp", {}, "cifar", 8192, 4096, 3, 1024, 1),
    RefCase("mlp", {}, "digits", 2048, 1000, 20, 500, 4),
    RefCase("resnet18", {"width": 16}, "cifar", 2048, 512, 1, 256, 1),
]
CUDA_REFERENCE_SCALE = 4  # more epochs on a GPU: each measurement stays >> timer noise


def engine_vs_reference(case: RefCase, device: torch.device, perf: Performance, quick: bool, repeats: int) -> dict:
    n, epochs = (case.quick_n, case.quick_epochs) if quick else (case.n, case.epochs)
    if device.type == "cuda":
        epochs *= CUDA_REFERENCE_SCALE
    split = random_images(case.pool, SHAPES[case.data])
    data, place_seconds, mean, std = engine_data(split, device)
    dataset = ReferenceDataset(split, reference_transform(mean, std))
    labeled = np.sort(np.random.default_rng(SEED + 1).choice(case.pool, n, replace=False))
    positions = torch.from_numpy(labeled).to(device)
    torch.manual_seed(SEED)
    initial = build_model(case.model, case.params, SHAPES[case.data], NUM_CLASSES).to(device)

    def engine():
        model = copy.deepcopy(initial)
        x, y = data.pool_x[positions], data.pool_y[positions]  # as the round loop gathers them
        optimizer = make_optimizer(model, "adam", LR, 0.0, 0.9, perf.fused_optimizer)
        stats = fit(model, x, y, optimizer, BATCH_SIZE, convergence(epochs), SEED, performance=perf)
        return stats.steps, stats.train_acc

    def reference():
        model = copy.deepcopy(initial)
        torch.manual_seed(SEED)  # the sampler's shuffle
        return reference_round(model, dataset, labeled, device, epochs)

    runs = interleaved({"engine": engine, "reference": reference}, repeats, device, f"{case.model}/{case.data}")
    engine_runs, reference_runs = runs["engine"], runs["reference"]
    steps = {engine_runs[0][1][0], reference_runs[0][1][0]}
    if len(steps) != 1:
        raise RuntimeError(f"engine and reference made different numbers of steps: {steps}")
    e, r = seconds_summary(engine_runs), seconds_summary(reference_runs)
    pair_speedups = [rs / es for (es, _), (rs, _) in zip(engine_runs, reference_runs, strict=True)]
    if device.type == "cuda":
        target = TARGETS["reference_cuda"]
    else:
        target = TARGETS["reference_cpu_mlp"] if case.model == "mlp" else None
    speedup = r["median"] / e["median"]
    return {
        "model": case.model,
        "model_params": case.params,
        "data": case.data,
        "n": n,
        "epochs": epochs,
        "steps": steps.pop(),
        "device": str(device),
        "performance": perf.to_dict(),
        "repeats": repeats,
        "engine_seconds": e,
        "reference_seconds": r,
        "speedup": speedup,
        "pair_speedup_median": statistics.median(pair_speedups),
        "pair_speedups": pair_speedups,
        "engine_place_seconds_once_per_trial": place_seconds,
        "target": target,
        "meets_target": None if target is None else speedup >= target,
    }


# --- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreCase:
    model: str
    params: dict
    pool: int
    labeled: int
    quick_pool: int


SCORING_CASES = [
    ScoreCase("mlp", {}, 32768, 4096, 8192),
    ScoreCase("resnet18", {"width": 16}, 4096, 1024, 1024),
]
CUDA_SCORING_SCALE = 8
K = 1000  # samples acquired per round: the paper's


def scoring(case: ScoreCase, device: torch.device, perf: Performance, quick: bool, repeats: int, k: int = K) -> dict:
    pool = case.quick_pool if quick else case.pool
    if device.type == "cuda":
        pool *= CUDA_SCORING_SCALE
    split = random_images(pool, SHAPES["cifar"])
    data, _, _, _ = engine_data(split, device)
    torch.manual_seed(SEED)
    model = perf.prepare(build_model(case.model, case.params, SHAPES["cifar"], NUM_CLASSES).to(device)).eval()
    labeled = np.zeros(pool, dtype=bool)
    labeled[np.random.default_rng(SEED).choice(pool, min(case.labeled, pool // 4), replace=False)] = True
    unlabeled = torch.from_numpy(np.flatnonzero(~labeled)).to(device)
    n = unlabeled.shape[0]
    bare_x = data.pool_x.index_select(0, unlabeled)  # for the forward-only figure, untimed
    margin = ACQUISITION_STRATEGIES.get("margin")
    batch = perf.inference_batch_size

    def engine():
        outputs = pool_outputs(model, data.pool_x, margin.extra["needs"], batch, positions=unlabeled, performance=perf)
        picks = min(k, n)  # a quick run's pool can be smaller than k
        return len(pick("margin", outputs, picks, np.random.default_rng(SEED), {}))  # k positions reach the host

    def bare():  # the same reads as the engine (each batch's rows of the pool tensor), a forward, nothing else
        with torch.inference_mode(), perf.autocast_on(device):
            for start in range(0, n, batch):
                model(perf.inputs(data.pool_x.index_select(0, unlabeled[start : start + batch])))

    def bare_forward_only():  # the rows gathered beforehand, off the clock: the model alone
        with torch.inference_mode(), perf.autocast_on(device):
            for start in range(0, n, batch):
                model(perf.inputs(bare_x[start : start + batch]))

    runs = interleaved(
        {"engine": engine, "bare": bare, "forward_only": bare_forward_only}, repeats, device, f"scoring {case.model}"
    )
    e, b, f = (seconds_summary(runs[name]) for name in ("engine", "bare", "forward_only"))
    ratio = b["median"] / e["median"]  # of samples per second: n / engine seconds over n / bare seconds
    return {
        "model": case.model,
        "model_params": case.params,
        "pool_unlabeled": n,
        "batch_size": batch,
        "device": str(device),
        "performance": perf.to_dict(),
        "repeats": repeats,
        "picked": runs["engine"][0][1],  # margin's picks per round: the engine side did the whole job
        "engine_seconds": e,
        "bare_seconds": b,
        "forward_only_seconds": f,
        "engine_samples_per_s": n / e["median"],
        "bare_samples_per_s": n / b["median"],
        "forward_only_samples_per_s": n / f["median"],
        "ratio": ratio,
        "ratio_to_forward_only": f["median"] / e["median"],
        "target": TARGETS["scoring"],
        "meets_target": ratio >= TARGETS["scoring"],
    }


# --- Ray ---------------------------------------------------------------------------------------


def ray_overhead(rounds: int) -> dict:
    import ray

    from benchmarks.ray_overhead import trial_overhead

    try:
        return trial_overhead(rounds)
    finally:
        ray.shutdown()


# --- the GPU: options, peak and the FLOP floor -------------------------------------------------


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Forward multiply-accumulates of one input of ``shape`` through conv and linear layers."""
    model = copy.deepcopy(model).eval()  # a copy: the pass must not move BatchNorm statistics
    total = 0

    def hook(module, args, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * per_output
        else:
            total += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return total


def peak_bf16_tflops(device: torch.device, size: int = 8192, iterations: int = 50) -> float:
    """Measured dense bf16 matmul throughput: the ceiling the FLOP floor is computed at."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    out = torch.empty(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    best = 0.0
    for _ in range(3):
        seconds, _ = timed(lambda: [torch.matmul(a, b, out=out) for _ in range(iterations)], device)
        best = max(best, 2 * size**3 * iterations / seconds / 1e12)
    return best


GPU_OPTION_SETS = {  # name -> options over "all off"; "auto" is what a GPU run gets by default
    "plain": {},
    "autocast": {"autocast": True},
    "channels_last": {"channels_last": True},
    "fused_optimizer": {"fused_optimizer": True},
    "compile": {"compile": True},
    "auto": "auto",
    "auto+compile": "auto+compile",
}


def gpu_training(device: torch.device, quick: bool, repeats: int, peak: float) -> list[dict]:
    n, epochs = (2048, 1) if quick else (8192, 2)
    results = []
    for width in (64, 16):
        results += gpu_width(device, width, n, epochs, repeats, peak)
        torch.cuda.empty_cache()
    return results


def gpu_option_sets(device: torch.device) -> dict[str, Performance]:
    options = {}
    for name, extra in GPU_OPTION_SETS.items():
        if isinstance(extra, str):
            auto = resolve_performance(DEFAULTS["performance"], device, True, DEFAULTS["eval"]["batch_size"])
            options[name] = replace(auto, compile=extra.endswith("+compile"))
        else:
            options[name] = replace(PLAIN, **extra)
    return options


def gpu_width(device: torch.device, width: int, n: int, epochs: int, repeats: int, peak: float) -> list[dict]:
    """resnet18 of ``width``: training images/s per option set, against the FLOP floor."""
    torch.manual_seed(SEED)
    initial = build_model("resnet18", {"width": width}, SHAPES["cifar"], NUM_CLASSES).to(device)
    macs = count_macs(initial, SHAPES["cifar"])
    floor_seconds_per_image = TRAIN_OVER_FORWARD * 2 * macs / (peak * 1e12)
    g = torch.Generator(device=device).manual_seed(SEED)
    x = torch.randn(n, *SHAPES["cifar"], device=device, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), device=device, generator=g)
    options = gpu_option_sets(device)

    def run(perf: Performance) -> int:
        model = copy.deepcopy(initial)
        optimizer = make_optimizer(model, "adam", LR, 0.0, 0.9, perf.fused_optimizer)
        return fit(model, x, y, optimizer, BATCH_SIZE, convergence(epochs), SEED, performance=perf).steps

    first = {}
    for name, perf in options.items():  # warm-up; a compiled config's first call compiles
        if perf.compile:
            torch._dynamo.reset()  # compile time as a new process pays it (inductor's disk cache aside)
        first[name] = timed(lambda perf=perf: run(perf), device)[0]
    runs = {name: lambda perf=perf: run(perf) for name, perf in options.items()}
    passes = interleaved(runs, repeats, device, f"gpu width {width}", warm_up=False)  # warmed up above
    times = {name: [seconds for seconds, _ in passes[name]] for name in options}
    results = []
    for name, perf in options.items():
        median = statistics.median(times[name])
        images_per_s = n * epochs / median
        results.append(
            {
                "model": "resnet18",
                "width": width,
                "options": name,
                "performance": perf.to_dict(),
                "n": n,
                "epochs": epochs,
                "batch_size": BATCH_SIZE,
                "seconds": times[name],
                "median_seconds": median,
                "first_call_seconds": first[name],
                "compile_seconds_estimate": first[name] - median if perf.compile else None,
                "images_per_s": images_per_s,
                "forward_macs_per_image": macs,
                "floor_images_per_s": 1 / floor_seconds_per_image,
                "time_over_floor": (median / (n * epochs)) / floor_seconds_per_image,
                "fraction_of_peak": images_per_s * floor_seconds_per_image,
            }
        )
    return results


# --- report ------------------------------------------------------------------------------------


def verdict(meets) -> str:
    return "-" if meets is None else ("ok" if meets else "MISSED")


def print_report(report: dict) -> None:
    round_vs_plain.print_machine(report["machine"])
    print(f"command       {report['command']}")
    if report["quick"]:
        print("quick         a smoke run (small sizes, 2-3 pairs): the verdicts are not measurements")

    print("\nengine_vs_plain: one round, engine / plain loop seconds (target <= 1.05)")
    print(
        f"  {'config':<17} {'device':<6} {'steps':>5} {'pairs':>5} {'engine s':>9} {'plain s':>9} {'ratio':>6} "
        f"{'pair ratio':>10} {'same':>5}  verdict"
    )
    for r in report["engine_vs_plain"]:
        w = r["wall_seconds"]
        name = f"{r['model']}/{r['data']}"
        print(
            f"  {name:<17} {r['device']:<6} {r['steps']:>5} {r['repeats']:>5} {w['median_engine']:>9.3f} "
            f"{w['median_plain']:>9.3f} {w['ratio']:>6.3f} {w.get('pair_ratio_median', float('nan')):>10.3f} "
            f"{'yes' if r.get('same_result') else 'NO':>5}  {verdict(r['meets_target'])}"
            + (", noisy" if r.get("noisy") else "")
        )

    print("\nengine_vs_reference: one round, reference (paper-style loop) / engine seconds")
    print(
        f"  {'config':<17} {'device':<6} {'n':>5} {'ep':>3} {'steps':>5} {'pairs':>5} {'engine s':>9} "
        f"{'reference s':>11} {'speedup':>8} {'target':>7}  verdict   (engine's one-off data placement)"
    )
    for r in report["engine_vs_reference"]:
        name = f"{r['model']}/{r['data']}"
        target = f">= {r['target']:.0f}x" if r["target"] else "none"
        print(
            f"  {name:<17} {r['device']:<6} {r['n']:>5} {r['epochs']:>3} {r['steps']:>5} {r['repeats']:>5} "
            f"{r['engine_seconds']['median']:>9.3f} {r['reference_seconds']['median']:>11.3f} "
            f"{r['speedup']:>7.1f}x {target:>7}  {verdict(r['meets_target']):<8}  "
            f"({r['engine_place_seconds_once_per_trial']:.3f} s)"
        )

    print("\nscoring: margin over the unlabeled pool, samples per second (target: engine / bare >= 0.9)")
    print("  bare: each batch's rows gathered from the pool tensor + forward; fwd-only: rows gathered off the clock")
    print(
        f"  {'model':<17} {'device':<6} {'pool':>6} {'batch':>5} {'engine/s':>10} {'bare/s':>10} {'ratio':>6}  "
        f"{'verdict':<7} {'fwd-only/s':>10} {'ratio':>6}"
    )
    for r in report["scoring"]:
        print(
            f"  {r['model']:<17} {r['device']:<6} {r['pool_unlabeled']:>6} {r['batch_size']:>5} "
            f"{r['engine_samples_per_s']:>10.0f} {r['bare_samples_per_s']:>10.0f} {r['ratio']:>6.3f}  "
            f"{verdict(r['meets_target']):<7} {r['forward_only_samples_per_s']:>10.0f} {r['ratio_to_forward_only']:>6.3f}"
        )

    ray = report["ray_overhead"]
    print("\nray_overhead: a digits/mlp trial on Ray Train (1 worker) against in-process")
    if ray is None:
        print("  skipped (--quick)")
    else:
        print(
            f"  rounds {ray['rounds']}: in-process {ray['in_process_seconds']:.2f} s, Ray Train {ray['ray_trial_seconds']:.2f} s"
        )
        print(f"  ray.init                 {ray['ray_init_seconds']:8.2f} s")
        print(f"  fixed start-up cost      {ray['startup_seconds']:8.2f} s")
        print(
            f"  per-round overhead       {ray['per_round_overhead_seconds']:8.3f} s"
            f"  (an in-process round: {ray['in_process_round_seconds']:.3f} s)"
        )

    gpu = report.get("gpu")
    print("\ngpu: resnet18 training images/s per performance option, against the FLOP-count floor")
    if gpu is None:
        print("  not measured (--device cpu)")
        return
    print(f"  measured peak bf16 matmul: {gpu['peak_bf16_tflops']:.0f} TFLOP/s")
    print(
        f"  {'width':>5} {'options':<16} {'images/s':>10} {'floor im/s':>11} {'time/floor':>10} "
        f"{'% of peak':>9} {'first call s':>12}"
    )
    for r in gpu["training"]:
        print(
            f"  {r['width']:>5} {r['options']:<16} {r['images_per_s']:>10.0f} {r['floor_images_per_s']:>11.0f} "
            f"{r['time_over_floor']:>10.1f} {100 * r['fraction_of_peak']:>8.1f}% {r['first_call_seconds']:>12.2f}"
        )
    macs = {r["width"]: r["forward_macs_per_image"] for r in gpu["training"]}
    print("  forward GMAC per image: " + ", ".join(f"width {w}: {m / 1e9:.3f}" for w, m in macs.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few pairs, no Ray: a smoke run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", metavar="FILE.json", help="write every figure to this JSON file")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved pairs (default 7, quick 2)")
    parser.add_argument("--ray-rounds", type=int, default=6, help="rounds of the Ray overhead trial")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"error: --device cuda, but torch {torch.__version__} ({built}) sees no CUDA device; "
            "run on a machine with a GPU, or use --device cpu.",
            file=sys.stderr,
        )
        return 2
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    if repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    # The options a run on this device gets by default (auto: the plain path on CPU).
    perf = resolve_performance(DEFAULTS["performance"], device, False, DEFAULTS["eval"]["batch_size"])
    conv_perf = resolve_performance(DEFAULTS["performance"], device, True, DEFAULTS["eval"]["batch_size"])

    report = {
        "machine": round_vs_plain.machine([device]),
        "command": "python -m benchmarks.perf " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "targets": TARGETS,
    }
    print("engine_vs_plain ...", file=sys.stderr)
    report["engine_vs_plain"] = []
    for case in round_vs_plain.CASES:
        epochs = case.quick_epochs if args.quick else case.epochs
        if device.type == "cuda":
            epochs *= round_vs_plain.CUDA_EPOCH_FACTOR
        pairs = 3 if args.quick else max(repeats, 10)
        report["engine_vs_plain"].append(round_vs_plain.measure(case, device, epochs, pairs))

    print("engine_vs_reference ...", file=sys.stderr)
    report["engine_vs_reference"] = [
        engine_vs_reference(case, device, conv_perf if case.model == "resnet18" else perf, args.quick, repeats)
        for case in REFERENCE_CASES
    ]
    print("scoring ...", file=sys.stderr)
    report["scoring"] = [
        scoring(case, device, conv_perf if case.model == "resnet18" else perf, args.quick, repeats)
        for case in SCORING_CASES
    ]
    if args.quick:
        report["ray_overhead"] = None
    else:
        print("ray_overhead ...", file=sys.stderr)
        report["ray_overhead"] = ray_overhead(args.ray_rounds)
    if device.type == "cuda":
        print("gpu ...", file=sys.stderr)
        report["machine"]["gpu"] = torch.cuda.get_device_name(device)
        peak = peak_bf16_tflops(device)
        report["gpu"] = {"peak_bf16_tflops": peak, "training": gpu_training(device, args.quick, repeats, peak)}
    report["machine"]["load_average_end"] = list(os.getloadavg())

    print_report(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
