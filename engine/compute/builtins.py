"""warmstart's own datasets, models and strategies, registered the first time they are needed.

The registries live in engine/schema/catalogue.py, below the modules that define the
built-ins (engine/compute/data.py and models.py, strategies/init.py and acquisition.py),
which register them when they are imported.  Importing this module hands each registry
the function that imports its built-ins' module, called the first time the registry is
consulted: a process that imports this module sees every built-in, and one that never
consults a registry (``warmstart --help``) never imports torch.  The command line, the
Python API and the analysis import it; a process that imports a built-ins' module
itself (every trial does) needs nothing more.
"""

from __future__ import annotations

from engine.schema.catalogue import ACQUISITION_STRATEGIES, DATASETS, INIT_STRATEGIES, MODELS


def _datasets() -> None:
    import engine.compute.data  # noqa: F401


def _models() -> None:
    import engine.compute.models  # noqa: F401


def _init_strategies() -> None:
    import strategies.init  # noqa: F401


def _acquisition_strategies() -> None:
    import strategies.acquisition  # noqa: F401


DATASETS.fill_with(_datasets)
MODELS.fill_with(_models)
INIT_STRATEGIES.fill_with(_init_strategies)
ACQUISITION_STRATEGIES.fill_with(_acquisition_strategies)
