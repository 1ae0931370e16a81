"""The statistics under the report's claims, on plain numbers: intervals over seeds, the
verdict rule, and the Pareto front.  No tables here (engine.analysis.results builds them).

Intervals are 95%:
- two grid points that share seeds: the paired t-interval of the per-seed differences;
- without shared seeds: Welch's t-interval of the difference of means;
- a difference of maxima (the λ×σ claim): a percentile bootstrap over seeds.
Each needs at least ``MIN_SEEDS`` values per side; with fewer there is no interval and
the verdict is "not enough seeds".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
MIN_SEEDS = 2  # the fewest values a t-interval (or a bootstrap worth the name) can be built on
BOOTSTRAP_SAMPLES = 2000

HOLDS, CONTRADICTED, INCONCLUSIVE, TOO_FEW = "holds", "contradicted", "inconclusive", "not enough seeds"


@dataclass(frozen=True)
class Interval:
    """A difference ``effect`` (treatment − control) and its interval; ``low``/``high`` NaN
    when there were too few seeds.  ``method``: paired t, Welch t, bootstrap or none."""

    effect: float
    low: float
    high: float
    method: str
    n_treatment: int
    n_control: int
    pairs: int  # seeds present on both sides (0 for an unpaired interval)


def _t(level: float, df: float) -> float:
    return float(scipy_stats.t.ppf(0.5 + level / 2, df))


def difference(treatment: dict, control: dict, level: float = LEVEL) -> Interval:
    """``treatment − control`` for two {seed: value} mappings: paired by seed when at least
    ``MIN_SEEDS`` seeds are on both sides, otherwise Welch's interval on the means."""
    a = {s: v for s, v in treatment.items() if not _missing(v)}
    b = {s: v for s, v in control.items() if not _missing(v)}
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) >= MIN_SEEDS:
        diffs = np.array([a[s] - b[s] for s in shared], dtype=float)
        mean, half = diffs.mean(), _t(level, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
        return Interval(float(mean), float(mean - half), float(mean + half), "paired t", len(a), len(b), len(shared))
    x, y = np.array(list(a.values()), dtype=float), np.array(list(b.values()), dtype=float)
    effect = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < MIN_SEEDS or len(y) < MIN_SEEDS:
        return Interval(effect, math.nan, math.nan, "none", len(x), len(y), 0)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0.0:  # every seed gave the same value on both sides: no spread to widen by
        return Interval(effect, effect, effect, "Welch t", len(x), len(y), 0)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))  # Welch–Satterthwaite
    half = _t(level, df) * se
    return Interval(effect, effect - half, effect + half, "Welch t", len(x), len(y), 0)


def bootstrap_max_gap(inside: list[list[float]], outside: list[list[float]], level: float = LEVEL) -> Interval:
    """max over ``inside`` cells of the mean − max over ``outside`` cells of the mean, each cell
    a list of per-seed values, with a percentile bootstrap that resamples every cell's seeds
    (fixed generator: the same table gives the same interval)."""
    inside = [np.array([v for v in c if not _missing(v)], dtype=float) for c in inside]
    outside = [np.array([v for v in c if not _missing(v)], dtype=float) for c in outside]
    inside, outside = [c for c in inside if len(c)], [c for c in outside if len(c)]
    n_in, n_out = sum(map(len, inside)), sum(map(len, outside))
    if not inside or not outside:
        return Interval(math.nan, math.nan, math.nan, "none", n_in, n_out, 0)
    effect = float(max(c.mean() for c in inside) - max(c.mean() for c in outside))
    if min(len(c) for c in inside + outside) < MIN_SEEDS:
        return Interval(effect, math.nan, math.nan, "none", n_in, n_out, 0)
    rng = np.random.default_rng(0)

    def resampled_max(cells: list[np.ndarray]) -> np.ndarray:
        means = [rng.choice(c, size=(BOOTSTRAP_SAMPLES, len(c))).mean(axis=1) for c in cells]
        return np.max(np.stack(means), axis=0)

    gaps = resampled_max(inside) - resampled_max(outside)
    low, high = np.quantile(gaps, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(effect, float(low), float(high), "bootstrap", n_in, n_out, 0)


def verdict(low: float, high: float, direction: int, strict: bool = True) -> str:
    """The rule, for the interval [low, high] of an effect: a claim that it is below zero (``direction`` −1) or above it (+1)
    *holds* when the whole interval lies on that side, is *contradicted* when the whole
    interval lies on the other side, and is *inconclusive* when the interval contains zero.
    A non-strict claim (≥) also holds when the interval touches zero from its side.
    Without an interval: *not enough seeds*."""
    if _missing(low) or _missing(high):
        return TOO_FEW
    low, high = (low, high) if direction > 0 else (-high, -low)
    if low > 0 or (not strict and low >= 0):
        return HOLDS
    if high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def pareto_front(accuracy, cost) -> np.ndarray:
    """Which points are non-dominated: no other point has accuracy ≥ and cost ≤ with one of
    them strict.  Higher accuracy and lower cost are better; a point with a missing value
    is neither on the front nor dominates any other.  Equal points are all on it."""
    acc, cost = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    valid = ~(np.isnan(acc) | np.isnan(cost))
    front = valid.copy()
    for i in np.flatnonzero(valid):
        better_or_equal = valid & (acc >= acc[i]) & (cost <= cost[i])
        strictly = (acc > acc[i]) | (cost < cost[i])
        front[i] = not (better_or_equal & strictly).any()
    return front


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
