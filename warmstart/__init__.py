"""warmstart: rounds of online and active learning, and how each round's model starts.

The Python API (see docs/python-api.md)::

    import warmstart as ws
    df = ws.run_trial({"init": "warm", "rounds": {"max_rounds": 3}})
    for r in ws.Trial({"acquisition": "margin"}):
        ...
    df = ws.run_suite("quickstart", "results/quickstart")
    df = ws.load("results/a", "results/b")
"""

from engine import __version__
from engine.api import (
    Config,
    ConfigError,
    Trial,
    TrialRound,
    list_datasets,
    list_models,
    list_strategies,
    load,
    report,
    run_suite,
    run_trial,
)

__all__ = [
    "Config",
    "ConfigError",
    "Trial",
    "TrialRound",
    "__version__",
    "list_datasets",
    "list_models",
    "list_strategies",
    "load",
    "report",
    "run_suite",
    "run_trial",
]
