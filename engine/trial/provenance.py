"""What made a row: the code, the libraries, the machine and the time (the RoundRecord
columns ``warmstart_version`` … ``host``, ``started_at`` and ``ended_at``).

The static part is computed once per process (a Ray worker computes its own: each row
names the process that trained it); the device name once per device.  None of it is part
of a trial's identity or compared by resume (roles ``timing`` and ``context`` in
engine/schema/records.py), except that resume reads ``device_name``, ``cpu_isa``, ``threads`` and ``torch_version`` to
tell a row computed on another machine from a corrupt one (engine/trial/resume.py)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from engine import __version__

# The checkout the running engine was imported from (the folder holding engine/).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
GIT_TIMEOUT = 5.0  # seconds per git command: a slow or hung git gives null, never a stuck trial


def now() -> datetime:
    """The current time, timezone-aware UTC (``started_at``, ``ended_at``)."""
    return datetime.now(UTC)


def cpu_isa() -> str:
    """The CPU capability ATen dispatches its vectorised kernels to in this process
    (``DEFAULT``, ``AVX2``, ``AVX512``, …; ``ATEN_CPU_CAPABILITY`` may lower it)."""
    return torch.backends.cpu.get_cpu_capability()


def _git(*args: str) -> str | None:
    """``git args`` in the package's checkout: its stdout, or None when git is missing,
    fails (not a checkout) or takes longer than GIT_TIMEOUT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # the package's checkout, no other
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# The packages whose code a run imports from the checkout: a file in them that git does not
# track yet (a new strategies module) is code the commit does not hold.
PACKAGES = ("engine", "strategies", "warmstart")


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the engine runs from; (None, None) when it is not
    the top of a git checkout (an installed package inside some other repository is not
    its checkout).  Dirty: tracked files with uncommitted changes, or files of the packages
    (PACKAGES) that git does not track and does not ignore."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != PACKAGE_ROOT:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *PACKAGES)
    if commit is None or status is None or untracked is None:
        return commit, None
    return commit, status != "" or untracked != ""


def _ray_version() -> str | None:
    ray = sys.modules.get("ray")  # not imported for this: a run outside Ray never loads it
    if ray is not None and getattr(ray, "__version__", None):
        return ray.__version__
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def static_columns() -> dict:
    """The provenance columns that are the same for every row this process writes."""
    commit, dirty = git_state()
    return {
        "warmstart_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "ray_version": _ray_version(),
        "cpu_isa": cpu_isa(),
        "host": socket.gethostname(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def device_name(device: torch.device) -> str:
    """The GPU's name on a CUDA device, else the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def provenance_columns(device: torch.device) -> dict:
    """Every provenance column but the round's times: the static ones, the device's name and
    the threads torch uses now (a test or a Ray trial may change them within a process)."""
    return {**static_columns(), "device_name": device_name(device), "threads": torch.get_num_threads()}
