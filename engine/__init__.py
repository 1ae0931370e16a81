"""warmstart's engine, one subpackage per layer (docs/architecture.md has the map):

schema/    what a run is: registries, config, plugins, the row schema
compute/   datasets as tensors, models, training, scoring, pretraining
storage/   a trial's rows, checkpoints and lock, on a folder or an object store
trial/     set-up, resume, the round loop; in-process or on Ray Train
suite/     suite files, Ray Tune, search, packing, trackers
analysis/  results, statistics, summaries, reports
cli.py, api.py   the command line and the Python API (``import warmstart``)
"""

__version__ = "0.1.0"
