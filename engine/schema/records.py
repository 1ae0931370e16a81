"""The result row: one ``RoundRecord`` per (trial, round), the one place a column is defined.

A row has three parts, in this column order:

- the record's own fields (what the round measured and the trial's fixed facts), typed
  by their annotations;
- ``pretrain_*``: the nested ``PretrainRecord`` of the source model, null without
  pretraining;
- ``cfg.*``: the whole config, flattened to dotted keys (``cfg.rounds.initial``,
  ``cfg.init.shrink``, ``cfg.convergence.train_acc``), typed from the allowed values
  declared next to each key.  A component's columns are the union of the parameters of
  every registered builder (``cfg.init.shrink`` is null for ``init: warm``), so every row
  written by one process has the same schema and ``pandas.read_parquet(dir)`` reads the
  whole table.

``store.TrialStore`` writes rows with ``arrow_schema()``; ``engine.analysis.results`` reads its
column lists from here.  Adding a column is adding a field below.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from engine.schema.catalogue import DATASETS
from engine.schema.config import (
    ALLOWED,
    COMPONENTS,
    DEFAULTS,
    PRETRAIN_ALLOWED,
    PRETRAIN_DEFAULTS,
    component_registry,
    flatten,
)
from engine.schema.registry import value_kind

CONFIG_PREFIX = "cfg."


# What a column is to the code that reads the table (engine/analysis/results.py) and to
# resume (engine/trial/resume.py), declared on the field next to its description:
#   name     a name or label: loaded as a categorical
#   count    an integer count: loaded as int64 when no row lacks it
#   timing   a time measurement: differs from run to run, so a resume never compares it
#   context  where a trial ran, not what it computed (the suite, the node, the ensemble): a resume never compares it
# and ``config=GROUP``: the column describes what a trial computes (a grid point's value);
# tables list these columns group by group, in CONFIG_GROUPS order, each in field order.
ROLES = ("name", "count", "timing", "context")
CONFIG_GROUPS = ("data", "model", "optimizer", "training", "init", "acquisition", "rounds", "eval", "scale")


def _doc(text: str, *roles: str, config: str | None = None) -> Any:
    if not set(roles) <= set(ROLES) or config not in (None, *CONFIG_GROUPS):
        raise ValueError(f"a column's roles are among {ROLES} and its config group among {CONFIG_GROUPS}")
    return field(metadata={"doc": text, "roles": roles, "config": config})


@dataclass(frozen=True)
class PretrainRecord:
    """What pretraining the source model measured; stored as ``pretrain_<field>`` columns."""

    samples: int = _doc("source samples trained on")
    classes: int = _doc("the source dataset's class count")
    epochs: int = _doc("epochs to convergence")
    steps: int = _doc("optimizer steps")
    stop_reason: str = _doc("threshold | plateau | max_epochs | diverged")
    train_acc: float = _doc("running training accuracy over the last epoch")
    seconds: float = _doc("wall seconds of pretraining", "timing")

    @classmethod
    def from_columns(cls, columns: dict) -> PretrainRecord | None:
        """The record from its ``pretrain_*`` columns (as a checkpoint keeps them); None when null."""
        values = {f.name: columns.get(f"pretrain_{f.name}") for f in dataclasses.fields(cls)}
        return None if any(v is None for v in values.values()) else cls(**values)


@dataclass(frozen=True)
class RoundRecord:
    """One round of one trial.  Field order is column order."""

    suite: str | None = _doc("the suite's name; null for a single run", "name", "context")
    trial_id: str = _doc("derived from the config: the same config always writes to the same trial")
    seed: int = _doc("the trial's seed", "count")
    shrink: float = _doc("effective λ: random 0, warm 1; NaN for strategies that are no mix", config="init")
    perturb: float = _doc("effective σ: random 1, warm 0; NaN for strategies that are no mix", config="init")
    per_round: int = _doc(
        "samples added per round after the first (cfg.rounds.per_round as a count)", "count", config="rounds"
    )
    round: int = _doc("from 1", "count")
    n_labeled: int = _doc("labeled samples trained on in this round", "count")
    epochs: int = _doc("epochs this round trained", "count")
    steps: int = _doc("optimizer steps this round", "count")
    stop_reason: str = _doc("threshold | plateau | max_epochs | diverged (non-finite training loss)", "name")
    train_acc: float = _doc("running accuracy over the last training epoch")
    train_loss: float = _doc("running loss over the last training epoch")
    test_acc: float = _doc("accuracy on the evaluation split (cfg.dataset.eval)")
    test_loss: float = _doc("loss on the evaluation split")
    train_seconds: float = _doc("wall seconds of training (see train_timing)", "timing")
    train_timing: str = _doc(
        "how train_seconds was measured: alone, or stacked_share (a share, by optimizer steps, of a stacked "
        "ensemble's training time: performance.ensemble; compare such rows by steps)",
        "name",
        "context",
    )
    acquire_seconds: float = _doc("wall seconds of scoring and picking this round's samples", "timing")
    world_size: int = _doc("data-parallel workers", "count", config="scale")
    device: str = _doc("cpu | cuda", "name")
    node: str | None = _doc(
        "where the round was trained: the Ray node id (rank 0's under Ray Train), or the host name outside Ray "
        "(the host name itself is always in host)",
        "context",
    )
    acquired: list[int] = _doc("dataset indices (training split) added this round; round 1: the initial set")
    acquired_classes: list[int] = _doc(
        "how many of this round's acquired samples are of each class (index: the class label), for the "
        "report's class histograms without reloading the dataset"
    )
    label_files: list[str] | None = _doc(
        "a live project's round (docs/live.md): the label or batch files it consumed, as 'labels/NAME#SHA256'; "
        "null in a simulated trial"
    )
    precise_bn: bool = _doc("BatchNorm statistics re-estimated before evaluation", config="eval")
    momentum: float | None = _doc(
        "the momentum SGD uses (cfg.optimizer.momentum); null for adam, which has none", config="optimizer"
    )
    eval_seconds: float = _doc("wall seconds of BatchNorm re-estimation and evaluation", "timing")
    capture_seconds: float = _doc(
        "CUDA graph capture in this round's training (once per trial; 0 without graphs)", "timing"
    )
    n_pool: int = _doc("samples the rounds draw from", config="data")
    n_eval: int = _doc("samples of the evaluation split", config="data")
    performance: str = _doc("JSON of the effective performance options")
    overrides: str | None = _doc("JSON {component: 'name=plugin'} of plugins that replaced a built-in")
    plugins: str | None = _doc(
        "JSON {plugin: sha256 prefix} of the user code the trial ran (a plugin file, a module, "
        "or __main__.<function>); null when none"
    )
    ensemble: str | None = _doc(
        "'<ensemble id>/<members>' when trained stacked with other trials; null alone", "name", "context"
    )
    # Provenance: what made the row (engine/trial/provenance.py); never compared by a resume,
    # which reads device_name, cpu_isa, threads and torch_version to tell another machine's row from a corrupt one.
    started_at: datetime = _doc("UTC start of the round", "timing")
    ended_at: datetime = _doc("UTC end of the round (row made)", "timing")
    warmstart_version: str = _doc("the installed warmstart version", "context")
    git_commit: str | None = _doc(
        "the checkout's commit when running from a git checkout of warmstart, else null", "context"
    )
    git_dirty: bool | None = _doc(
        "the checkout has uncommitted changes to tracked files, or untracked files in engine/, strategies/ or "
        "warmstart/ (null outside a checkout)",
        "context",
    )
    torch_version: str = _doc("torch.__version__ (the build, e.g. 2.14.1+cu128)", "context")
    ray_version: str | None = _doc("ray.__version__ where installed, else null", "context")
    device_name: str = _doc("the GPU's name, or the CPU's model name", "context")
    cpu_isa: str = _doc(
        "ATen's CPU capability in use (torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...)",
        "context",
    )
    threads: int = _doc(
        "torch's intra-op threads when the round ran (torch.get_num_threads()): some kernels split their sums by it",
        "count",
        "context",
    )
    host: str = _doc("the host name of the process that wrote the row", "context")
    pretrain: PretrainRecord | None = _doc("pretraining's results, as pretrain_* columns")
    config: dict = _doc("the flattened config, as cfg.* columns (config_columns)")

    def to_row(self) -> dict[str, Any]:
        """The flat row: own fields, ``pretrain_*``, then ``cfg.*``."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("pretrain", "config")}
        row.update(pretrain_columns(self.pretrain))
        row.update({CONFIG_PREFIX + key: value for key, value in self.config.items()})
        return row


def pretrain_columns(record: PretrainRecord | None) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(PretrainRecord)]
    if record is None:
        return {f"pretrain_{name}": None for name in names}
    return {f"pretrain_{name}": getattr(record, name) for name in names}


# --- types -------------------------------------------------------------------------------

_ARROW = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bool: pa.bool_(),
    list: pa.list_(pa.string()),
    datetime: pa.timestamp("us", tz="UTC"),
}


def _arrow_of_hint(hint: Any) -> pa.DataType:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return pa.list_(_arrow_of_hint(args[0]))
    if args and typing.get_origin(hint) is not list:  # X | None
        return _arrow_of_hint(args[0])
    return _ARROW[hint]


def record_fields() -> list[tuple[str, pa.DataType]]:
    """The record's own and pretraining columns, typed."""
    hints = typing.get_type_hints(RoundRecord)
    out = []
    for f in dataclasses.fields(RoundRecord):
        if f.name == "pretrain":
            pre = typing.get_type_hints(PretrainRecord)
            out += [(f"pretrain_{p.name}", _arrow_of_hint(pre[p.name])) for p in dataclasses.fields(PretrainRecord)]
        elif f.name != "config":
            out.append((f.name, _arrow_of_hint(hints[f.name])))
    return out


RECORD_COLUMNS = [name for name, _ in record_fields()]
PRETRAIN_COLUMNS = [name for name in RECORD_COLUMNS if name.startswith("pretrain_")]


# --- column roles, from the fields' metadata -----------------------------------------------


def column_fields() -> list[tuple[str, dataclasses.Field]]:
    """Every own column (``pretrain_*`` included), in column order, with the field declaring it."""
    out = []
    for f in dataclasses.fields(RoundRecord):
        if f.name == "pretrain":
            out += [(f"pretrain_{p.name}", p) for p in dataclasses.fields(PretrainRecord)]
        elif f.name != "config":
            out.append((f.name, f))
    return out


# --- short names: what tables call a cfg.* column ---------------------------------------------

# A row holds its config once, as cfg.* columns.  The tables (engine/analysis) and users of
# ``results.load`` name the most used of them short, as a column of the loaded frame: each is
# a copy of one cfg.* column, made by ``with_short_names`` and nowhere else.  Per short name:
# (the cfg.* column, its CONFIG_GROUPS group, its ROLES, the column of its group it follows in
# tables; None: first).
SHORT_NAMES: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "dataset": ("cfg.dataset.name", "data", ("name",), None),
    "eval_split": ("cfg.dataset.eval", "data", (), "dataset"),
    "pretrain_dataset": ("cfg.pretrain.dataset", "data", (), "n_eval"),
    "model": ("cfg.model.name", "model", ("name",), None),
    "optimizer": ("cfg.optimizer.name", "optimizer", ("name",), None),
    "lr": ("cfg.optimizer.lr", "optimizer", (), "optimizer"),
    "weight_decay": ("cfg.optimizer.weight_decay", "optimizer", (), "lr"),
    "batch_size": ("cfg.batch_size", "training", ("count",), None),
    "init": ("cfg.init.name", "init", ("name",), None),
    "bn_stats": ("cfg.init.bn_stats", "init", ("name",), "perturb"),
    "acquisition": ("cfg.acquisition.name", "acquisition", ("name",), None),
}


def with_short_names(table: Any) -> Any:
    """``table`` (a DataFrame, or one row as a dict) with every SHORT_NAMES column it lacks,
    copied from its cfg.* column where the table has that."""
    added = {
        short: table[column] for short, (column, *_) in SHORT_NAMES.items() if column in table and short not in table
    }
    if not added:
        return table
    return table.assign(**added) if hasattr(table, "assign") else {**table, **added}


def columns_with(role: str) -> list[str]:
    """The columns declared with ``role`` (one of ROLES): the short names with it, then the own columns in column order."""
    short = [name for name, (_, _, roles, _) in SHORT_NAMES.items() if role in roles]
    return short + [name for name, f in column_fields() if role in f.metadata["roles"]]


def config_group(group: str) -> list[str]:
    """The columns of one CONFIG_GROUPS group in table order: its own columns in column order,
    each short name placed after the column it follows."""
    columns = [name for name, f in column_fields() if f.metadata["config"] == group]
    for name, (_, in_group, _, after) in SHORT_NAMES.items():
        if in_group == group:
            columns.insert(0 if after is None else columns.index(after) + 1, name)
    return columns


NAME_COLUMNS = columns_with("name")
COUNT_COLUMNS = columns_with("count")
# What a trial computes, in the order tables show them (suite, trial_id, seed and device are
# not among them: a grid point pools seeds, and the same config on other hardware is the
# same experiment).
CONFIG_COLUMNS = [name for group in CONFIG_GROUPS for name in config_group(group)]
INIT_COLUMNS = config_group("init")  # how a round is initialised
STRATEGY_COLUMNS = INIT_COLUMNS + config_group("acquisition")  # ... or picks its samples
NOT_CHECKED = tuple(columns_with("timing") + columns_with("context"))  # what a resume does not compare


# --- the flattened config ----------------------------------------------------------------


def kind_of(constraint: Any, default: Any) -> Any:
    """The Python type a config value has (int, float, str, bool, or ``list[T]`` of one of
    them), or None when it may take several (stored as JSON text).  Constraints say it with
    ``kind()`` (``AutoOr`` says its other kind: 'auto' is then null); a parameter without
    one takes its default's type, a list its elements' type."""
    if constraint is not None and (kind := value_kind(constraint)) is not None:
        return kind
    if getattr(constraint, "kind", None) is not None:  # declared, and several kinds: JSON
        return None
    return _kind_of_value(default)


def _kind_of_value(value: Any) -> Any:
    if isinstance(value, list):
        kinds = {_kind_of_value(v) for v in value}
        return list[kinds.pop()] if len(kinds) == 1 and None not in kinds and list not in kinds else None
    return type(value) if type(value) in _ARROW and type(value) is not list else None


def _arrow_of_kind(kind: Any) -> pa.DataType:
    """The Arrow type of a config kind (JSON text for None, several kinds)."""
    if kind is None:
        return pa.string()
    if typing.get_origin(kind) is list:
        return pa.list_(_arrow_of_kind(typing.get_args(kind)[0]))
    return _ARROW[kind]


def _sections() -> dict[str, tuple[type | None, Any]]:
    """Every config key as {dotted key: (kind, default)}; components: the union of
    every registered builder's parameters, a key with conflicting kinds stored as JSON."""
    keys: dict[str, tuple[type | None, Any]] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if prefix == "" and key in (*COMPONENTS, "pretrain"):
                continue
            if isinstance(value, dict):
                walk(value, f"{dotted}.")
            else:
                keys[dotted] = (kind_of(ALLOWED.get(dotted), value), value)

    def union(section: str, registry) -> None:
        """Every registered builder's parameters under ``section``; conflicting kinds: JSON."""
        params: dict[str, tuple[type | None, Any]] = {}
        for entry in registry.entries():
            for param, default in entry.defaults.items():
                kind = kind_of(entry.constraints.get(param), default)
                if param in params and params[param][0] != kind:
                    kind = None
                params[param] = (kind, None)
        keys.update({f"{section}.{p}": v for p, v in sorted(params.items()) if f"{section}.{p}" not in keys})

    walk(DEFAULTS, "")
    union("dataset", DATASETS)  # each dataset's own parameters: dataset.size, dataset.path, ...
    for component in COMPONENTS:
        keys[f"{component}.name"] = (str, None)
        union(component, component_registry(component))
    for key, default in PRETRAIN_DEFAULTS.items():
        keys[f"pretrain.{key}"] = (str if key == "dataset" else kind_of(PRETRAIN_ALLOWED.get(key), default), None)
    return keys


def config_fields() -> list[tuple[str, pa.DataType]]:
    """The ``cfg.*`` columns in order, typed (JSON text where a key takes several kinds)."""
    return [(CONFIG_PREFIX + key, _arrow_of_kind(kind)) for key, (kind, _) in _sections().items()]


def config_columns(config: dict) -> dict[str, Any]:
    """A validated config (``Config.to_dict()``) as ``{dotted key: value}`` for every
    ``cfg.*`` column: null where a key does not apply, values cast to the column's type."""
    values = flatten(config)
    out = {}
    for key, (kind, _) in _sections().items():
        out[key] = _cast(values.get(key), kind)
    return out


def _cast(value: Any, kind: Any) -> Any:
    if value is None:
        return None
    if kind is None:  # a key of several kinds (a name or a list of names): text, JSON for non-strings
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if value == "auto" and kind is not str:  # AutoOr: 'auto' or a value of ``kind``; 'auto' is null
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is list:
        return [_cast(v, typing.get_args(kind)[0]) for v in value]
    if kind is list:
        return [str(v) for v in value]
    if kind is str and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    return value


def arrow_schema() -> pa.Schema:
    """The Parquet schema of a row written by this process (registries as loaded now)."""
    return pa.schema(record_fields() + config_fields())


# --- the column table in docs/results.md --------------------------------------------------


def _type_name(arrow: pa.DataType, nullable: bool) -> str:
    name = f"list of {_type_name(arrow.value_type, False)}" if pa.types.is_list(arrow) else str(arrow)
    return name.replace("double", "float64") + (", nullable" if nullable else "")


def column_table() -> str:
    """The Markdown table of the result columns, from the fields' descriptions: the record's
    own columns, ``pretrain_*``, then the ``cfg.*`` columns, one row per config section (a
    section's columns are its defaults' keys and every registered builder's parameters, which
    plugins extend: ``warmstart list``).  docs/results.md holds it between marker comments and
    a test compares the two; regenerate with ``python -m engine.schema.records docs/results.md``."""
    from engine.schema.config import COMPONENTS, DEFAULTS, PRETRAIN_DEFAULTS

    def row(name: str, kind: str, text: str) -> str:
        return f"| `{name}` | {kind} | {text.replace('|', chr(92) + '|')} |"

    lines = ["| column | type | what |", "| --- | --- | --- |"]
    hints = typing.get_type_hints(RoundRecord)
    for f in dataclasses.fields(RoundRecord):
        if f.name == "pretrain":
            pre = typing.get_type_hints(PretrainRecord)
            for p in dataclasses.fields(PretrainRecord):
                kind = _type_name(_arrow_of_hint(pre[p.name]), True)
                lines.append(row(f"pretrain_{p.name}", kind, f"pretraining: {p.metadata['doc']}; null without it"))
        elif f.name != "config":
            kind = _type_name(_arrow_of_hint(hints[f.name]), type(None) in typing.get_args(hints[f.name]))
            lines.append(row(f.name, kind, f.metadata["doc"]))
    for key, default in {**DEFAULTS, "pretrain": PRETRAIN_DEFAULTS}.items():
        column = CONFIG_PREFIX + key
        if not isinstance(default, dict):  # typed as _sections types it; sections: per key, so no registry is read
            arrow = _arrow_of_kind(kind_of(ALLOWED.get(key), default))
            lines.append(row(column, _type_name(arrow, default is None), f"config key `{key}`"))
            continue
        keys = ", ".join(f"`{k}`" for k in default)
        if key in (*COMPONENTS, "dataset"):
            keys += f", and every registered {key}'s own parameters; null where one does not apply"
        elif key == "pretrain":
            keys += "; null without pretraining"
        lines.append(row(f"{column}.*", "typed per key", f"config section `{key}`: {keys}"))
    return "\n".join(lines) + "\n"


COLUMNS_BEGIN = "<!-- columns: generated by engine.schema.records.column_table; do not edit -->\n"
COLUMNS_END = "<!-- /columns -->"


def write_column_table(page: str) -> None:
    """Replace the table between the marker comments in ``page`` (docs/results.md) with ``column_table()``."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    before, rest = text.split(COLUMNS_BEGIN)
    after = rest.split(COLUMNS_END, 1)[1]
    with open(page, "w", encoding="utf-8") as f:
        f.write(before + COLUMNS_BEGIN + column_table() + COLUMNS_END + after)


if __name__ == "__main__":  # python -m engine.schema.records [docs/results.md]: print the table, or rewrite the page's
    import sys

    if len(sys.argv) > 1:
        write_column_table(sys.argv[1])
    else:
        print(column_table(), end="")
