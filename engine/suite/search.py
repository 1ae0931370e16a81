"""Search: a suite's ``search:`` section, the Tune scheduler and searcher it makes, and the
record of what the search did (``_warmstart/search.json`` under ``--out``).

    search:
      scheduler: asha            # none | asha | hyperband
      metric: mean_test_acc      # test_acc | mean_test_acc | test_loss | mean_test_loss
      mode: max                  # max | min (default: max for accuracies, min for losses)
      time_attr: round           # round | steps (cumulative optimizer steps of the point)
      grace_period: 1            # time_attr units a point runs before it can be stopped
      reduction_factor: 3        # 1 / reduction_factor of the points go on at each rung
      max_t: null                # the most a point runs in time_attr units (default: its rounds)
      searcher: random           # grid | random | optuna
      num_samples: 20            # points a random or optuna searcher proposes
      seed: 0                    # the searcher's seed: a re-run proposes the same points

**A point, not a seed, is what the scheduler judges.**  Seeds stay a grid axis inside
each point: under a scheduler or a sampling searcher, one Tune trial runs all of a
point's seeds round by round (round r of every seed, then round r + 1) and reports
after each round the mean over seeds.  ASHA therefore compares points on the same
seed-averaged number the summary ranks them by, and stops a point with all its seeds.
Without either (a plain grid), each (point, seed) is its own Tune trial, as before, so
a cluster runs the seeds of one point in parallel.

``hyperband`` is Tune's asynchronous HyperBand (ASHA with several brackets): Tune's
synchronous HyperBand pauses trials at every rung, which a trial without Tune
checkpoints cannot resume cheaply.

Every report carries the round's metrics (mean over seeds), ``mean_test_acc`` (the
mean over the rounds so far of that), and the point's cumulative ``steps`` and
``seconds`` (all seeds, from round 1).  Parquet stays the record; the driver writes
where each point stopped to ``_warmstart/search.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import ConfigError
from engine.storage.store import read_meta, write_meta

SCHEDULERS = ("none", "asha", "hyperband")
SEARCHERS = ("grid", "random", "optuna")
METRICS = ("test_acc", "mean_test_acc", "test_loss", "mean_test_loss")
TIME_ATTRS = ("round", "steps")
RANGES = ("uniform", "loguniform")
KEYS = (
    "scheduler",
    "metric",
    "mode",
    "time_attr",
    "grace_period",
    "reduction_factor",
    "searcher",
    "num_samples",
    "seed",
)
RECORD_NAME = "search.json"  # under <out>/_warmstart/


@dataclass(frozen=True)
class SearchSpec:
    scheduler: str = "none"
    metric: str = "mean_test_acc"
    mode: str = "max"
    time_attr: str = "round"
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_t: int | None = None  # None: the points' rounds (time_attr round)
    searcher: str = "grid"
    num_samples: int = 10
    seed: int = 0

    @property
    def per_point(self) -> bool:
        """Whether one Tune trial runs a point's seeds (a scheduler or a sampler needs it)."""
        return self.scheduler != "none" or self.searcher != "grid"

    @property
    def sampled(self) -> bool:
        return self.searcher != "grid"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Range:
    """A continuous grid axis: ``{uniform: [low, high]}`` or ``{loguniform: [low, high]}``."""

    kind: str
    low: float
    high: float

    def domain(self):
        from ray import tune

        return tune.uniform(self.low, self.high) if self.kind == "uniform" else tune.loguniform(self.low, self.high)

    def ends(self) -> list[float]:
        return [self.low, self.high]


def _one_of(value: Any, allowed: tuple, key: str) -> Any:
    if value not in allowed:
        raise ConfigError(f"The 'search.{key}' parameter must be one of {', '.join(allowed)}. Got {value!r}.")
    return value


def _int(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"The 'search.{key}' parameter must be an int >= {low}. Got {value!r}.")
    return value


def parse_search(section: Any) -> SearchSpec:
    """The ``search:`` section, checked; None or absent: a plain grid."""
    if section is None:
        return SearchSpec()
    if not isinstance(section, dict):
        raise ConfigError(f"A suite's 'search' must be a mapping of {', '.join(KEYS)}. Got {section!r}.")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise ConfigError(f"Unknown search key {unknown[0]!r}; a search has {', '.join(KEYS)}.")
    scheduler = _one_of(section.get("scheduler", "none"), SCHEDULERS, "scheduler")
    metric = _one_of(section.get("metric", "mean_test_acc"), METRICS, "metric")
    mode = _one_of(section.get("mode", "min" if metric.endswith("loss") else "max"), ("max", "min"), "mode")
    time_attr = _one_of(section.get("time_attr", "round"), TIME_ATTRS, "time_attr")
    grace = _int(section.get("grace_period", 1), "grace_period", 1)
    factor = section.get("reduction_factor", 3)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise ConfigError(f"The 'search.reduction_factor' parameter must be a number > 1. Got {factor!r}.")
    max_t = section.get("max_t")
    if max_t is not None:
        max_t = _int(max_t, "max_t", grace)
    elif time_attr == "steps" and scheduler != "none":
        raise ConfigError("The 'search.max_t' parameter is needed with time_attr: steps (the most steps a point runs).")
    searcher = _one_of(section.get("searcher", "grid"), SEARCHERS, "searcher")
    samples = _int(section.get("num_samples", 10), "num_samples", 1)
    if "num_samples" in section and searcher == "grid":
        raise ConfigError(
            "The 'search.num_samples' parameter needs searcher random or optuna; a grid runs every point."
        )
    seed = _int(section.get("seed", 0), "seed", 0)
    if searcher == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("searcher: optuna needs the optuna package: pip install 'warmstart[optuna]'.") from None
    return SearchSpec(scheduler, metric, mode, time_attr, grace, float(factor), max_t, searcher, samples, seed)


def parse_range(key: str, value: dict) -> Range:
    """``{uniform: [low, high]}`` or ``{loguniform: [low, high]}`` for grid key ``key``."""
    form = next(iter(value)) if len(value) == 1 else None
    bounds = value.get(form) if form else None
    if (
        form not in RANGES
        or not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    ):
        raise ConfigError(
            f"The grid key {key!r} takes a list of values or a range "
            f"({{uniform: [low, high]}} or {{loguniform: [low, high]}}). Got {value!r}."
        )
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high or (form == "loguniform" and low <= 0):
        need = "0 < low < high" if form == "loguniform" else "low < high"
        raise ConfigError(f"The {form} range of grid key {key!r} needs {need}. Got [{bounds[0]}, {bounds[1]}].")
    return Range(form, low, high)


# --- the Tune side --------------------------------------------------------------------


def scheduler(spec: SearchSpec, rounds: int):
    """The Tune scheduler, or None.  ``rounds``: the most rounds a point runs."""
    if spec.scheduler == "none":
        return None
    max_t = spec.max_t or rounds
    from ray.tune.schedulers import ASHAScheduler

    brackets = 1
    if spec.scheduler == "hyperband":  # as many brackets as rungs fit between grace and max_t
        brackets = max(1, int(math.log(max(max_t / spec.grace_period, 1), spec.reduction_factor)) + 1)
    return ASHAScheduler(
        time_attr=spec.time_attr,
        metric=spec.metric,
        mode=spec.mode,
        max_t=max_t,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
        brackets=brackets,
    )


def searcher(spec: SearchSpec):
    """The Tune search algorithm for a sampling searcher (grid: None, Tune's own variants)."""
    if spec.searcher == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=spec.seed)
    if spec.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(metric=spec.metric, mode=spec.mode, seed=spec.seed)
    return None


def point_id(trial_ids: list[str]) -> str:
    """A point's name: its first seed's trial id with the seed part replaced by a digest of all."""
    digest = hashlib.sha256(json.dumps(sorted(trial_ids)).encode()).hexdigest()[:8]
    head = trial_ids[0].rsplit("-", 2)[0] if trial_ids[0].count("-") >= 2 else trial_ids[0]
    return f"{head}-p{digest}"


class RoundMeans:
    """Turns each round's rows (one per seed) into one Tune report: means over seeds, and the
    point's cumulative steps and seconds."""

    def __init__(self, rounds: int, seeds: int) -> None:
        self.rounds, self.seeds = rounds, seeds
        self.steps, self.seconds = 0, 0.0
        self.test_accs: list[float] = []
        self.test_losses: list[float] = []

    def report(self, rows: list[dict]) -> dict[str, Any]:
        def mean(key: str) -> float:
            return sum(float(r[key]) for r in rows) / len(rows)

        round_steps = sum(int(r["steps"]) for r in rows)
        round_seconds = sum(r["train_seconds"] + r["acquire_seconds"] + (r.get("eval_seconds") or 0.0) for r in rows)
        self.steps += round_steps
        self.seconds += round_seconds
        self.test_accs.append(mean("test_acc"))
        self.test_losses.append(mean("test_loss"))
        return {
            "round": int(rows[0]["round"]),
            "rounds": self.rounds,
            "seeds": len(rows),
            "n_labeled": int(rows[0]["n_labeled"]),
            "test_acc": self.test_accs[-1],
            "test_loss": self.test_losses[-1],
            "train_acc": mean("train_acc"),
            "train_loss": mean("train_loss"),
            "epochs": mean("epochs"),
            "mean_test_acc": sum(self.test_accs) / len(self.test_accs),
            "mean_test_loss": sum(self.test_losses) / len(self.test_losses),
            "steps": self.steps,
            "seconds": self.seconds,
            "round_steps": round_steps,
            "round_seconds": round_seconds,
        }


# --- the record -------------------------------------------------------------------------


def read_record(out: str) -> dict | None:
    """What the search under ``out`` did: ``{"search": spec, "points": {point id: entry}}``."""
    raw = read_meta(out, RECORD_NAME)
    return json.loads(raw) if raw is not None else None


def write_record(out: str, record: dict) -> None:
    write_meta(out, RECORD_NAME, json.dumps(record, indent=1, sort_keys=True).encode())


def stopped_rounds(record: dict | None, spec: SearchSpec) -> dict[str, int]:
    """``{trial id: round it was stopped after}`` for points the same scheduler stopped
    before; another search spec (or none) continues them."""
    if not record or record.get("search") != spec.to_dict():
        return {}
    stopped = {}
    for entry in record.get("points", {}).values():
        if entry.get("stopped_by"):
            stopped.update({tid: entry["round"] for tid in entry["trial_ids"]})
    return stopped


def search_table(record: dict):
    """The points tried, one row each, best first: point, seeds, last round, stopped_by,
    metric, steps, seconds."""
    import pandas as pd

    spec = record["search"]
    rows = []
    for pid, entry in record.get("points", {}).items():
        rows.append(
            {
                **{k: v for k, v in entry["point"].items()},
                "seeds": len(entry["trial_ids"]),
                "round": entry["round"],
                "of": entry["rounds"],
                "stopped_by": entry.get("stopped_by") or "",
                spec["metric"]: entry.get("metric"),
                "steps": entry.get("steps", 0),
                "seconds": round(entry.get("seconds", 0.0), 1),
                "point_id": pid,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Points that ran every round first, then by the metric: the best completed point leads.
    table["_complete"] = table["round"] >= table["of"]
    table = table.sort_values(["_complete", spec["metric"]], ascending=[False, spec["mode"] == "min"])
    return table.drop(columns="_complete").reset_index(drop=True)


def best_point(record: dict) -> dict | None:
    """The best point among those that ran every round (what the search chose), or None."""
    table = search_table(record)
    if table.empty:
        return None
    done = table[table["round"] >= table["of"]]
    return None if done.empty else done.iloc[0].to_dict()


def format_search(record: dict) -> str:
    """The search as text: a line on what ran, the points table, the best point and its compute."""
    spec = record["search"]
    table = search_table(record)
    if table.empty:
        return "search: no points reported"
    stopped = int((table["stopped_by"] != "").sum())
    lines = [
        f"search: {spec['searcher']} searcher, scheduler {spec['scheduler']} on {spec['metric']} ({spec['mode']}), "
        f"{len(table)} points tried, {stopped} stopped early; "
        f"{int(table['steps'].sum())} optimizer steps, {table['seconds'].sum():.0f} s of compute in all",
        table.drop(columns="point_id").to_string(index=False),
    ]
    best = best_point(record)
    if best is not None:
        keys = [k for k in record["points"][best["point_id"]]["point"]]
        where = " ".join(f"{k}={best[k]:.4g}" if isinstance(best[k], float) else f"{k}={best[k]}" for k in keys)
        lines.append(
            f"best point: {where}: {spec['metric']} {best[spec['metric']]:.4f} "
            f"({best['seeds']} seed(s), {int(best['steps'])} steps, {best['seconds']:.1f} s)"
        )
    return "\n".join(lines)
