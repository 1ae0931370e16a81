"""Leaves no Ray process of a run behind: ``python -m engine.trial.reaper DRIVER_PID SESSION_DIR``.

``engine.trial.distributed.init_ray`` starts this small process, in its own session, beside an
embedded local Ray instance.  When the driver ends in a way that skips Ray's own
shutdown (SIGKILL, a lost terminal, an out-of-memory kill), it ends every process whose
command line names the run's Ray session folder — the GCS, the raylet, the dashboard
and runtime-env agents, the workers — first with SIGTERM, then SIGKILL.  After a normal
exit it finds none and ends too.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_processes(session: str) -> list[int]:
    """Pids whose command line names ``session`` (this process excluded)."""
    name = os.path.basename(session.rstrip("/"))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if name.encode() in f.read():
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def reap(session: str, grace: float = 5.0) -> bool:
    """SIGTERM, then after ``grace`` seconds SIGKILL, every process of ``session``; whether none is left."""
    pids = session_processes(session)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        pids = [p for p in pids if alive(p)]
    return len(session_processes(session)) == 0


def main(argv: list[str]) -> int:
    driver, session = int(argv[0]), argv[1]
    while alive(driver):
        time.sleep(1.0)
    time.sleep(2.0)  # Ray's own shutdown, where the driver could run it, goes first
    reap(session)
    return 0


if __name__ == "__main__" and sys.platform.startswith("linux"):
    sys.exit(main(sys.argv[1:]))
