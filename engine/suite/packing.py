"""Several trials on one GPU: how many, and the share of a GPU each asks Ray Tune for.

One trial at the paper's batch of 128 leaves most of a GPU idle: its step is bound by
the host (DESIGN.md, "Cost at scale").  Ray Tune packs trials whose resource bundles ask
for a fraction of a GPU onto the same GPU, each in its own process, so a suite fills a
GPU by asking ``gpus_per_worker / N`` GPUs per trial for N trials per GPU
(``warmstart suite --trials-per-gpu N``).  The share is not part of the config, so
packing never changes a trial's id: a suite resumes under any ``--trials-per-gpu``.

``auto`` chooses N from a measurement: the packing table ``benchmarks/gpu_check.sh``
writes (trial-rounds per GPU-minute at 1, 2, 4 and 8 concurrent trials), read from
``$WARMSTART_PACKING`` or ``~/.cache/warmstart/packing.json``; the rule is the smallest N
within ``WITHIN`` of the best measured throughput (more trials per GPU add memory and
per-trial latency, so a tie goes to fewer).  Without a table: DEFAULT_TRIALS_PER_GPU.

Nothing here imports Ray: the suite driver and the benchmarks both use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import ConfigError

DEFAULT_TRIALS_PER_GPU = 4  # no measurement yet: the target pack (>= 2.5x one trial)
WITHIN = 0.9  # auto: the smallest N reaching this fraction of the best measured throughput
MAX_TRIALS_PER_GPU = 64
TABLE_ENV = "WARMSTART_PACKING"
DEFAULT_TABLE = "~/.cache/warmstart/packing.json"


def table_path() -> Path:
    return Path(os.environ.get(TABLE_ENV) or DEFAULT_TABLE).expanduser()


def choose(throughput: dict[int, float], within: float = WITHIN) -> int:
    """The smallest pack size whose throughput is at least ``within`` of the best one."""
    if not throughput:
        raise ValueError("no measured pack sizes")
    best = max(throughput.values())
    return min(n for n, value in throughput.items() if value >= within * best)


def read_table(path: Path | None = None) -> dict[int, float] | None:
    """Trial-rounds per GPU-minute by pack size, from a packing table; None without one."""
    path = path or table_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {int(n): float(value) for n, value in data["rounds_per_gpu_minute"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"The packing table {path} is not one benchmarks/gpu_check.sh wrote: {exc}.") from None


def write_table(path: Path, throughput: dict[int, float], about: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {"rounds_per_gpu_minute": {str(n): v for n, v in sorted(throughput.items())}, "chosen": choose(throughput)}
    path.write_text(json.dumps({**table, **about}, indent=2))


def resolve_trials_per_gpu(value: str | int | None) -> int | None:
    """``--trials-per-gpu``: None (Tune's packing as the config asks), a count, or ``auto``."""
    if value is None:
        return None
    if value == "auto":
        measured = read_table()
        return choose(measured) if measured else DEFAULT_TRIALS_PER_GPU
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if not 1 <= count <= MAX_TRIALS_PER_GPU or str(value).strip() != str(count):
        raise ConfigError(
            f"The '--trials-per-gpu' option must be 'auto' or an integer in [1, {MAX_TRIALS_PER_GPU}]. Got {value!r}."
        )
    return count


def trial_bundle(scaling: dict, trials_per_gpu: int | None = None) -> dict[str, float]:
    """The resources one in-process trial asks Tune for: 1 CPU, and its GPUs shared by N."""
    bundle = {"CPU": 1.0}
    gpus = float(scaling["gpus_per_worker"] or 0)
    if gpus:
        # Ray accepts fractions of a GPU to 4 decimals; round down so N bundles fit on it.
        bundle["GPU"] = gpus if not trials_per_gpu else int(gpus / trials_per_gpu * 10_000) / 10_000
    return bundle
