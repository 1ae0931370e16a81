"""A suite's set-up, the same for ``warmstart suite`` and ``warmstart.run_suite``: the
suite loaded, its pools and round counts checked, its options and its ``out`` checked,
all before anything is written or Ray starts.  Every refusal is one ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ConfigError
from engine.storage.uri import normalise
from engine.suite.packing import resolve_trials_per_gpu
from engine.suite.suite_file import Suite, check_pools, load_suite
from engine.suite.tune import check_out
from engine.trial.distributed import check_shared_out


@dataclass(frozen=True)
class SuiteSetup:
    """A checked suite, ready for ``engine.suite.tune.run_suite``."""

    suite: Suite
    out: str
    rounds: dict[str, int]  # each trial's round count, by id
    trials_per_gpu: int | None

    def headline(self) -> str:
        """``suite NAME: N trials -> OUT``, as the CLI announces it."""
        spec = self.suite.search
        if spec.sampled:
            count = f"{spec.num_samples} points x {len(self.suite.seeds)} seed(s) from a {spec.searcher} searcher"
        else:
            count = f"{len(self.suite.trials)} trials"
        return f"suite {self.suite.name}: {count} -> {self.out}"


def set_up_suite(
    source: str,
    out: str | None = None,
    *,
    plugins: list[str] = (),
    sets: list[str] = (),
    trackers: list[str] = (),
    resume: bool = False,
    max_concurrent: int | None = None,
    trials_per_gpu: str | int | None = None,
    address: str | None = None,
    shared_fs: bool = False,
) -> SuiteSetup:
    """Load the suite ``source`` (a YAML file or a shipped suite's name) and refuse, before
    anything runs, a missing dataset or impossible round count, a bad option, and an
    ``out`` (default ``results/<suite name>``) that cannot be written or holds other results,
    or that is a local folder on the cluster at ``address`` of several nodes (unless
    ``shared_fs``: mounted on every node)."""
    suite = load_suite(source, list(plugins), list(sets), list(trackers))
    rounds = check_pools(suite)
    out = normalise(out or f"results/{suite.name}")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(
            f"The 'max_concurrent' parameter (--max-concurrent) must be an int >= 1. Got {max_concurrent!r}."
        )
    packed = resolve_trials_per_gpu(trials_per_gpu)
    if packed is not None and not any(t.config.scaling.gpus_per_worker > 0 for t in suite.trials):
        raise ConfigError(
            "The '--trials-per-gpu' option packs trials that run on GPUs, but every trial of this suite has "
            "scaling.gpus_per_worker 0; add --set scaling.gpus_per_worker=1."
        )
    check_shared_out(out, address, shared_fs)  # before anything is written under out
    check_out(suite, out, resume)
    return SuiteSetup(suite, out, rounds, packed)
