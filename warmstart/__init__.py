"""warmstart: rounds of online and active learning, and how each round's model starts.

The Python API (see docs/python-api.md)::

    import warmstart as ws
    df = ws.run_trial({"init": "warm", "rounds": {"max_rounds": 3}})
    for r in ws.Trial({"acquisition": "margin"}):
        ...
    df = ws.run_suite("quickstart", "results/quickstart")
    df = ws.load("results/a", "results/b")
"""

from engine import __version__, api
from engine.api import *  # noqa: F403  (the public API: engine.api.__all__)

__all__ = [*api.__all__, "__version__"]
