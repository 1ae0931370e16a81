"""Live projects: rounds whose labels come from the world (docs/live.md).

project.py: the folder (``live init``, the pool and evaluation set, the query files, the
exported model); intake.py: the label and batch files that arrive, read and checked;
step.py: a step (the next round, trained by the trial's own round functions with the
files as its source of labels) and ``watch``.
"""
