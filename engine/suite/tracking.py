"""Experiment trackers, through Tune's logger callbacks: every round a trial reports
reaches TensorBoard, MLflow or Weights & Biases with the trial's whole config.

    tracking:
      tensorboard: true                    # event files in each Tune trial's folder
      mlflow: {tracking_uri: file:/x/mlruns, experiment: my-suite}
      wandb: {project: warmstart, mode: offline}

or on the command line ``--tracker tensorboard``, ``--tracker mlflow[=URI]``,
``--tracker wandb[=PROJECT]`` (repeatable; it adds to the suite's ``tracking``).

What is logged: a Tune trial's config is ``{"cfg": the whole flattened config (dotted
keys, as the Parquet ``cfg.*`` columns), "seeds": [...]}`` and every report is one
round (``test_acc``, ``mean_test_acc``, ``steps``, ``seconds``, ... as in
engine/suite/search.py), logged at step = round.

- tensorboard: Tune's ``TBXLoggerCallback`` (tensorboardX comes with Ray): scalars
  ``ray/tune/<metric>``, the config as hparams at the trial's end and as text at its
  start, in ``<out>/_warmstart/tune/<suite>/<trial>/events.out.tfevents.*``.
- mlflow: Tune's ``MLflowLoggerCallback``, one run per Tune trial; the config as
  params, each round's metrics at step = round.  Default store: a local file,
  ``sqlite:///<out>/_warmstart/mlflow.db`` (``./mlflow.db`` for an object-store
  ``--out``); ``mlflow ui --backend-store-uri`` that URI shows it.
- wandb: Tune's ``WandbLoggerCallback``; ``mode: offline`` (the default) needs no
  account or network (``wandb sync`` uploads later).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from engine.errors import ConfigError

TRACKERS = {"tensorboard": (), "mlflow": ("tracking_uri", "experiment"), "wandb": ("project", "mode")}
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


def _section(name: str, value: Any) -> dict[str, Any]:
    if value is True or value is None:
        return {}
    if value is False:
        return {"off": True}
    if not isinstance(value, dict):
        raise ConfigError(
            f"The 'tracking.{name}' entry must be true or a mapping of {', '.join(TRACKERS[name]) or 'nothing'}. "
            f"Got {value!r}."
        )
    unknown = sorted(set(value) - set(TRACKERS[name]))
    if unknown:
        allowed = ", ".join(TRACKERS[name]) or "no keys"
        raise ConfigError(f"Unknown key {unknown[0]!r} in 'tracking.{name}'; it takes {allowed}.")
    if name == "wandb" and value.get("mode", "offline") not in ("online", "offline"):
        raise ConfigError(f"The 'tracking.wandb.mode' parameter must be one of online, offline. Got {value['mode']!r}.")
    return dict(value)


def parse_tracking(section: Any, flags: list[str] = ()) -> dict[str, dict[str, Any]]:
    """``tracking:`` (a mapping, or a list of names) plus ``--tracker`` flags, checked:
    ``{tracker: its settings}``."""
    if section is None:
        section = {}
    if isinstance(section, list):
        section = {name: True for name in section}
    if not isinstance(section, dict):
        raise ConfigError(f"A suite's 'tracking' must map {', '.join(TRACKERS)} to settings. Got {section!r}.")
    chosen: dict[str, dict[str, Any]] = {}
    for name, value in section.items():
        if name not in TRACKERS:
            raise ConfigError(f"Unknown tracker {name!r}; known: {', '.join(TRACKERS)}.")
        settings = _section(name, value)
        if not settings.pop("off", False):
            chosen[name] = settings
    for flag in flags:
        name, _, arg = flag.partition("=")
        if name not in TRACKERS:
            raise ConfigError(f"Unknown tracker {name!r} in --tracker; known: {', '.join(TRACKERS)}.")
        settings = chosen.setdefault(name, {})
        if arg and name == "mlflow":
            settings["tracking_uri"] = arg
        elif arg and name == "wandb":
            settings["project"] = arg
        elif arg:
            raise ConfigError(f"--tracker {name} takes no value. Got {flag!r}.")
    for name in chosen:
        if name in EXTRAS:
            try:
                __import__(EXTRAS[name])
            except ImportError:
                raise ConfigError(
                    f"The {name} tracker needs the {EXTRAS[name]} package: pip install 'warmstart[{name}]'."
                ) from None
    return chosen


def mlflow_uri(settings: dict[str, Any], out: str) -> str:
    """The tracking URI: the setting, else a local SQLite file (MLflow 3 refuses a bare
    ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``; its own advice is SQLite)."""
    if settings.get("tracking_uri"):
        return settings["tracking_uri"]
    folder = os.getcwd() if "://" in out else os.path.join(os.path.abspath(os.path.expanduser(out)), "_warmstart")
    os.makedirs(folder, exist_ok=True)
    return "sqlite:///" + os.path.join(folder, "mlflow.db")


def callbacks(tracking: dict[str, dict[str, Any]], out: str, suite: str) -> list:
    """Tune callbacks for the chosen trackers."""
    made = []
    if "tensorboard" in tracking:
        made.append(_tensorboard())
    if "mlflow" in tracking:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        settings = tracking["mlflow"]
        made.append(
            MLflowLoggerCallback(
                tracking_uri=mlflow_uri(settings, out), experiment_name=settings.get("experiment", suite)
            )
        )
    if "wandb" in tracking:
        settings = tracking["wandb"]
        mode = settings.get("mode", "offline")
        if mode == "offline":  # no API key needed, nothing leaves the machine
            os.environ["WANDB_MODE"] = "offline"
        extra = {}
        if "://" not in out:
            # W&B writes straight into the results folder: left in the trial's staging folder,
            # its last run could be copied out by Tune before W&B finished writing it.
            extra["dir"] = os.path.join(os.path.abspath(os.path.expanduser(out)), "_warmstart", "wandb")
            os.makedirs(extra["dir"], exist_ok=True)
        made.append(_wandb()(project=settings.get("project", suite), group=suite, mode=mode, **extra))
    return made


def _wandb():
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class FlushingActor(_WandbLoggingActor):
        """Tune's W&B logging actor, which waits for W&B's own process to write the run
        before returning: Tune kills the actor right after, which otherwise cut the last
        trial's offline run file short (seen here: 7 bytes instead of 9 kB)."""

        def run(self):
            result = super().run()
            import wandb

            wandb.teardown()
            return result

    class WandB(WandbLoggerCallback):
        _logger_actor_cls = FlushingActor

    return WandB


def _tensorboard():
    from ray.tune.logger import TBXLoggerCallback

    class TensorBoard(TBXLoggerCallback):
        """Tune's TensorBoard logger, plus the whole config as text when a trial starts
        (Tune's hparams hold only what it resolved itself)."""

        def log_trial_start(self, trial) -> None:
            super().log_trial_start(trial)
            text = yaml.safe_dump(trial.config.get("cfg", {}), sort_keys=True)
            self._trial_writer[trial].add_text("config", "```\n" + text + "```")

    return TensorBoard()
