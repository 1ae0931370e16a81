"""A suite's options and its set-up, the same for ``warmstart suite`` and ``warmstart.run_suite``.

``SuiteOptions`` is what the user asked for (the CLI's options, the API's keywords), built and
checked once.  ``set_up_suite`` then loads the suite, checks its pools and round counts, its
``out`` (writable, not holding other results, not a local folder on a cluster of several
nodes) and which of its trials train stacked, all before anything is written or Ray starts.
Every refusal is one ConfigError.  ``engine.suite.tune.run_suite`` takes the ``SuiteSetup``
and checks none of it again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.errors import ConfigError
from engine.schema.config import HOW_FAR, flatten
from engine.storage.folders import check_results_folder
from engine.storage.store import has_rows, read_manifest
from engine.storage.uri import normalise
from engine.suite.packing import MAX_TRIALS_PER_GPU, resolve_trials_per_gpu
from engine.suite.stacking import Grouping, ensemble_units
from engine.suite.suite_file import Suite, check_pools, load_suite
from engine.trial.distributed import check_shared_out


@dataclass(frozen=True)
class SuiteOptions:
    """How to run a suite: ``warmstart suite``'s options, ``warmstart.run_suite``'s keywords.
    Build it with ``SuiteOptions.build`` from what a user typed; constructing it checks it."""

    suite: str  # a suite file, or the name of a shipped suite
    out: str | None = None  # normalised; None: results/<suite name> (set_up_suite fills it in)
    resume: bool = False
    address: str | None = None  # a Ray cluster to join; None: a local instance
    max_concurrent: int | None = None  # at most this many Tune trials at once
    trials_per_gpu: int | None = None  # trials packed on one GPU (engine/suite/packing.py)
    shared_fs: bool = False  # a local out is mounted at the same path on every node
    plugins: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()  # --set overrides of the base config
    trackers: tuple[str, ...] = ()  # --tracker, added to the suite's tracking

    def __post_init__(self) -> None:
        count = self.max_concurrent
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigError(f"The 'max_concurrent' parameter (--max-concurrent) must be an int >= 1. Got {count!r}.")
        packed = self.trials_per_gpu
        if packed is not None and (
            isinstance(packed, bool) or not isinstance(packed, int) or not 1 <= packed <= MAX_TRIALS_PER_GPU
        ):
            raise ConfigError(
                f"The '--trials-per-gpu' option must be 'auto' or an integer in [1, {MAX_TRIALS_PER_GPU}]. Got {packed!r}."
            )
        for name in ("plugins", "sets", "trackers"):
            if not isinstance(getattr(self, name), tuple):
                raise TypeError(f"SuiteOptions.{name} is a tuple (SuiteOptions.build converts a list)")

    @classmethod
    def build(
        cls,
        suite: str,
        out: str | None = None,
        *,
        resume: bool = False,
        address: str | None = None,
        max_concurrent: int | None = None,
        trials_per_gpu: str | int | None = None,
        shared_fs: bool = False,
        plugins: Sequence[str] = (),
        sets: Sequence[str] = (),
        trackers: Sequence[str] = (),
    ) -> SuiteOptions:
        """The options from a user's values: ``out`` normalised, ``trials_per_gpu`` ('auto',
        'N' or N) a count, the lists as tuples."""
        return cls(
            suite,
            normalise(out) if out else None,  # '' is the default, as None
            resume=resume,
            address=address,
            max_concurrent=max_concurrent,
            trials_per_gpu=resolve_trials_per_gpu(trials_per_gpu),
            shared_fs=shared_fs,
            plugins=tuple(plugins),
            sets=tuple(sets),
            trackers=tuple(trackers),
        )


@dataclass(frozen=True)
class SuiteSetup:
    """A checked suite, ready for ``engine.suite.tune.run_suite``."""

    suite: Suite
    options: SuiteOptions  # its out filled in
    rounds: dict[str, int]  # each trial's round count, by id
    trial_ids: tuple[str, ...]  # what the suite's manifest lists (check_out)
    grouping: Grouping  # a plain grid's Tune trials, its stacked ones grouped (engine/suite/stacking.py)

    @property
    def out(self) -> str:
        return self.options.out

    def headline(self) -> str:
        """``suite NAME: N trials -> OUT``, as the CLI announces it."""
        spec = self.suite.search
        if spec.sampled:
            count = f"{spec.num_samples} points x {len(self.suite.seeds)} seed(s) from a {spec.searcher} searcher"
        else:
            count = f"{len(self.suite.trials)} trials"
        return f"suite {self.suite.name}: {count} -> {self.out}"


def set_up_suite(options: SuiteOptions) -> SuiteSetup:
    """Load the suite ``options.suite`` (a YAML file or a shipped suite's name) and check it
    (``check_suite``)."""
    return check_suite(load_suite(options.suite, options.plugins, options.sets, options.trackers), options)


def check_suite(suite: Suite, options: SuiteOptions) -> SuiteSetup:
    """Refuse, before anything runs, a missing dataset or impossible round count, ``--trials-per-gpu``
    for a suite without GPUs, ``performance.ensemble: true`` under a scheduler or searcher, and an
    ``out`` (default ``results/<suite name>``) that cannot be written or holds other results, or
    that is a local folder on the cluster at ``address`` of several nodes (unless ``shared_fs``:
    mounted on every node)."""
    rounds = check_pools(suite)
    options = replace(options, out=options.out or normalise(f"results/{suite.name}"))
    if options.trials_per_gpu is not None and not any(t.config.scaling.gpus_per_worker > 0 for t in suite.trials):
        raise ConfigError(
            "The '--trials-per-gpu' option packs trials that run on GPUs, but every trial of this suite has "
            "scaling.gpus_per_worker 0; add --set scaling.gpus_per_worker=1."
        )
    check_shared_out(options.out, options.address, options.shared_fs)  # before anything is written under out
    ids = check_out(suite, options.out, options.resume)
    grouping = ensemble_units(suite.trials or suite.probes, suite.name, suite.search.per_point, options.max_concurrent)
    return SuiteSetup(suite, options, rounds, tuple(ids), grouping)


# --- the results folder, and a suite grown since it ran there ----------------------------


def _base_change(old: dict, new: dict) -> str | None:
    """The first base key (dotted) that differs, as text; keys that only say how far a
    trial runs (``rounds.max_rounds``) may change."""
    before, after = flatten(old), flatten(new)
    for key in sorted(set(before) | set(after)):
        if key in HOW_FAR:
            continue
        if before.get(key, "(absent)") != after.get(key, "(absent)"):
            return f"base key {key!r} was {before.get(key, '(absent)')!r}, now {after.get(key, '(absent)')!r}"
    return None


def suite_plugins(suite: Suite) -> dict[str, str]:
    """Plugin -> SHA-256 prefix of its code, over every trial the suite plans (``Config.plugin_code``)."""
    code: dict[str, str] = {}
    for trial in [*suite.trials, *suite.probes]:
        code.update(trial.config.plugin_code())
    return dict(sorted(code.items()))


def check_out(suite: Suite, out: str, resume: bool) -> list[str]:
    """Refuse (ConfigError, nothing written) an --out that cannot be written or holds other
    results; the trial ids the manifest will list.  With ``resume``, the suite may have
    grown (new seeds, grid values, more rounds): what is recorded must still be part of
    it, and the base config must be the same."""
    out = check_results_folder(out, suite.name)  # writable, and neither inside nor holding other results
    manifest = read_manifest(out)
    ids = [t.trial_id for t in suite.trials]
    if manifest is None:
        if has_rows(out):
            raise ConfigError(
                f"{out} already holds results that are not from suite {suite.name!r}; choose another --out."
            )
    elif manifest["name"] != suite.name:
        raise ConfigError(f"{out} holds suite {manifest['name']!r}, not {suite.name!r}; choose another --out.")
    elif not resume:
        raise ConfigError(
            f"{out} already holds suite {suite.name!r}; pass --resume to continue it, or choose another --out."
        )
    else:
        grown = "--resume accepts it grown by new seeds, grid values or rounds; choose another --out"
        change = _base_change(manifest["base"], suite.base) if "base" in manifest else None
        if change:
            raise ConfigError(f"Suite {suite.name!r} changed since {out} was written: {change}; {grown}.")
        then, now = manifest.get("plugins") or {}, suite_plugins(suite)
        changed = sorted(k for k in set(then) & set(now) if then[k] != now[k])
        if changed:
            raise ConfigError(
                f"Plugin {changed[0]} changed since suite {suite.name!r} ran in {out}: sha256 {then[changed[0]]} then, "
                f"{now[changed[0]]} now, and its trials would mix two versions of that code; restore it, or "
                "run the new one into another --out."
            )
        missing = [] if suite.search.sampled else sorted(set(manifest["trials"]) - set(ids))
        if missing:
            raise ConfigError(
                f"Suite {suite.name!r} changed since {out} was written: its trial {missing[0]!r} "
                f"(and {len(missing) - 1} more) is not in it any more; {grown}."
                if len(missing) > 1
                else f"Suite {suite.name!r} changed since {out} was written: its trial {missing[0]!r} is not in it "
                f"any more; {grown}."
            )
        ids += [tid for tid in manifest["trials"] if tid not in ids]  # a sampled suite's earlier points
    return ids
