"""warmstart's engine, one subpackage per layer (docs/architecture.md has the map):

schema/    what a run is: registries, config, plugins, the row schema
compute/   datasets as tensors, models, training, scoring, pretraining
storage/   a trial's rows, checkpoints and lock, on a folder or an object store
trial/     set-up, resume, the round loop; in-process or on Ray Train
suite/     suite files, Ray Tune, search, packing, trackers
analysis/  results, statistics, summaries, reports
cli.py, api.py   the command line and the Python API (``import warmstart``)

The flat module paths of earlier releases (``from engine import results``,
``from engine.models import register``) still import, with a DeprecationWarning that
names the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# old flat module -> its place in the layered package
MOVED = {
    "registry": "schema.registry", "config": "schema.config", "plugins": "schema.plugins", "records": "schema.records",
    "data": "compute.data", "models": "compute.models", "train": "compute.train",
    "scoring": "compute.scoring", "pretrain": "compute.pretrain",
    "store": "storage.store", "check": "storage.check",
    "loop": "trial.loop", "session": "trial.session", "runner": "trial.runner",
    "distributed": "trial.distributed", "progress": "trial.progress", "reaper": "trial.reaper",
    "points": "suite.points", "tune": "suite.tune", "search": "suite.search",
    "tracking": "suite.tracking", "packing": "suite.packing",
    "results": "analysis.results", "stats": "analysis.stats", "tables": "analysis.tables", "report": "analysis.report",
}  # fmt: skip


def _moved(old: str) -> object:
    new = f"{__name__}.{MOVED[old]}"
    warnings.warn(f"engine.{old} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import engine.results`` (and ``from engine.models import register``) load the moved module."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.rpartition(".")
        if head == __name__ and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = _moved(spec.name.rpartition(".")[2])
        self.real_spec = module.__spec__  # the import system sets __spec__ to the alias's; put it back
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.real_spec


def __getattr__(name: str) -> object:  # ``from engine import results``
    if name in MOVED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.meta_path.append(_MovedFinder())
