"""The catalogue: every registry of named builders, and what lists them (like timm's
``_registry.py``).

It owns the four registries: datasets, models, init and acquisition strategies, and is the
one place the engine reaches them from.  The built-ins register into them from their own
modules (engine/compute/data.py, engine/compute/models.py, strategies/init.py,
strategies/acquisition.py), with the same decorators plugins use.  Those modules sit above
this layer, so nothing here imports them: importing one registers its built-ins, and
engine/compute/builtins.py (imported by the command line, the Python API and the analysis)
makes each registry import its built-ins' module the first time it is consulted, so a
config check or ``warmstart --help`` does not wait for torch.  Everything that needs a
registry by its config section (validation, the ``cfg.*`` columns, ``warmstart list``,
``list_*``) asks here.
"""

from __future__ import annotations

from engine.schema.plugins import load_entry_points
from engine.schema.registry import ModelSpec, Registry

DATASETS = Registry("dataset", n_inputs=2, plural="datasets", has_builtins=True)
MODELS = Registry("model", n_inputs=2, plural="models", has_builtins=True)
INIT_STRATEGIES = Registry("init strategy", n_inputs=2, plural="init strategies", has_builtins=True)
ACQUISITION_STRATEGIES = Registry(
    "acquisition strategy", n_inputs=3, plural="acquisition strategies", has_builtins=True
)

# Config section -> the registry its ``name`` is looked up in, in the order ``warmstart list`` shows them.
REGISTRIES: dict[str, Registry] = {
    "dataset": DATASETS,
    "model": MODELS,
    "init": INIT_STRATEGIES,
    "acquisition": ACQUISITION_STRATEGIES,
}


def model_spec(name: str, params: dict) -> ModelSpec:
    """What strategies may know of a configured model before it is built (see ModelSpec)."""
    count = MODELS.get(name).extra.get("n_blocks")
    return ModelSpec(name, dict(params), None if count is None else count(params))


def describe(registry: Registry) -> list[dict]:
    """A registry's entries as plain data: ``[{name, params, doc}]`` (and ``needs`` for an
    acquisition strategy)."""
    return [
        {
            "name": e.name,
            "params": dict(e.defaults),
            "doc": e.doc,
            **({"needs": list(e.extra["needs"])} if "needs" in e.extra else {}),
        }
        for e in registry.entries()
    ]


def list_strategies() -> dict[str, list[dict]]:
    """The registered init and acquisition strategies (plugins included), as ``warmstart
    list`` prints them: ``{"init": [{name, params, doc}], "acquisition": [{name, params, doc, needs}]}``."""
    load_entry_points()
    return {"init": describe(INIT_STRATEGIES), "acquisition": describe(ACQUISITION_STRATEGIES)}


def list_models() -> list[dict]:
    """The registered models (plugins included): ``[{name, params, doc}]``."""
    load_entry_points()
    return describe(MODELS)


def list_datasets() -> list[dict]:
    """The registered datasets (plugins included): ``[{name, params, doc}]``."""
    load_entry_points()
    return describe(DATASETS)
