"""A real Label Studio server for tests/live/test_labelstudio.py: the ``label-studio`` package in
its own virtual environment (its dependencies are not warmstart's), started on SQLite in a
temporary folder on a free local port.

The environment is built once per Label Studio version and kept outside the repository, at
``~/.cache/warmstart/labelstudio-venv-<version>`` (or ``$WARMSTART_LABELSTUDIO_VENV``); a
build (pip, then a migrated SQLite database every server starts from) takes about four
minutes here and needs the package registry; a cached one needs nothing.  A marker
file written last says the build finished; without it the folder is rebuilt.  CI builds it
before the tests (``python tests/live/labelstudio_server.py``) and keeps ``~/.cache/warmstart``.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VERSION = "1.23.2"
MARKER = ".warmstart-built"
TEMPLATE, DATABASE = "warmstart-template", "label_studio.sqlite3"  # a migrated database, copied for each server
START_TIMEOUT = 300  # seconds (about 10 s here)


def venv_path() -> Path:
    default = Path.home() / ".cache" / "warmstart" / f"labelstudio-venv-{VERSION}"
    return Path(os.environ.get("WARMSTART_LABELSTUDIO_VENV", default)).expanduser()


class BuildFailed(RuntimeError):
    pass


def built(venv: Path) -> bool:
    marker = venv / MARKER
    return marker.exists() and marker.read_text().strip() == VERSION and (venv / TEMPLATE / DATABASE).exists()


def build_venv() -> Path:
    """The virtual environment with ``label-studio==VERSION``: the cached one, or a new one
    (one builder at a time: others wait on the lock, then reuse it)."""
    venv = venv_path()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built(venv):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"label-studio=={VERSION}"],
        ]
        for step in steps:
            _run(step)
        # A database with every migration applied, which each server starts from (a copy): a
        # new one takes Label Studio one or two minutes to migrate, a migrated one seconds.
        manage = next(venv.glob("lib/python*/site-packages/label_studio/manage.py"))
        _run(
            [str(venv / "bin" / "python"), str(manage), "migrate", "--no-color", "-v", "0"],
            _environment(venv / TEMPLATE),
        )
        (venv / MARKER).write_text(VERSION)
    return venv


def _run(step: list[str], env: dict | None = None) -> None:
    done = subprocess.run(step, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise BuildFailed(f"{' '.join(step[-3:])} failed with status {done.returncode}: {tail}")


def _environment(data_dir: Path) -> dict:
    """Label Studio's settings: SQLite and media in ``data_dir``, no signup without a link, no calls home."""
    return {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str  # the admin's legacy API token (an annotator's script uses it)
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Its process group ends (SIGTERM, then SIGKILL after 20 s)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


def start(venv: Path, data_dir: Path) -> Server:
    """Label Studio on 127.0.0.1 and a free port, its data (a copy of the migrated SQLite
    database, media) in ``data_dir``; one user, whose legacy token is enabled.  Returns once
    ``/health`` answers."""
    port, token = free_port(), secrets.token_hex(20)
    log = data_dir / "label-studio.log"
    command = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--data-dir",
        str(data_dir),
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        "annotator@example.com",
        "--password",
        secrets.token_hex(12),
        "--user-token",
        token,
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(venv / TEMPLATE / DATABASE, data_dir / DATABASE)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_environment(data_dir),
            cwd=data_dir,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", token, process, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with status {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"label-studio did not answer /health within {START_TIMEOUT} s:\n{server.log_tail()}")


if __name__ == "__main__":  # CI: build (or find) the environment before the tests, and say how long it took
    began = time.perf_counter()
    cached = built(venv_path())
    try:
        where = build_venv()
    except BuildFailed as exc:
        print(f"label-studio environment: {exc}", file=sys.stderr)
        sys.exit(1)
    how = "cached" if cached else "built"
    print(f"label-studio {VERSION} environment {how} at {where} in {time.perf_counter() - began:.0f} s")
