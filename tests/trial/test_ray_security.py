"""Who gets into the Ray instances the engine starts or joins (docs/cluster.md, "Who can reach
Ray"): the local instance has Ray's token authentication on and listens on 127.0.0.1 only; a
cluster that wants a token the user lacks is one line saying what to set, and the user's own
token joins it.  The local instance is the session's shared one (``ray_address``); the secured
cluster is a real ``ray start --head`` with a token of its own."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.trial.distributed import check_token_path, private_token_file

# Ray instances started and joined.
pytestmark = pytest.mark.slow

REPO = str(Path(__file__).resolve().parents[2])
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
RUN = ["run", "--set", "dataset.name=digits", "--set", "rounds.max_rounds=1", "--quiet"]


def _env(home: Path, **auth: str) -> dict[str, str]:
    """This process's environment without any Ray credentials (and a HOME without ~/.ray), plus ``auth``."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    return {**env, "HOME": str(home), "PYTHONPATH": REPO, **auth}


def _warmstart(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], env=env, capture_output=True, text=True, timeout=240, cwd=REPO
    )


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or (
        address.version == 6 and bool(address.ipv4_mapped and address.ipv4_mapped.is_loopback)
    )


# --- the local instance -------------------------------------------------------------------------


def test_the_local_instance_has_token_authentication_on(ray_address, tmp_path):
    """Ray reports token mode, and a client without the token is refused (in one line)."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    refused = _warmstart(_env(tmp_path), *RUN, "--out", str(tmp_path / "out"), "--address", ray_address)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines() == [
        f"warmstart: error: The Ray cluster at '{ray_address}' requires token authentication: export "
        "RAY_AUTH_MODE=token and put the cluster's token in ~/.ray/auth_token, in a file named by "
        "RAY_AUTH_TOKEN_PATH, or in RAY_AUTH_TOKEN (on the head node, `ray get-auth-token` prints it)."
    ]
    assert not (tmp_path / "out").exists()


def test_the_local_instance_listens_on_loopback_only(ray_address):
    """Every socket that the driver and the Ray processes it started listen on is 127.0.0.1 (or ::1):
    the GCS, the raylet, the agents, every worker, the driver's own."""
    import psutil  # Ray's own copy
    import ray

    ray.get(ray.remote(num_cpus=0)(lambda: os.getpid()).remote())  # at least one worker process
    me = psutil.Process()
    listening = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[(conn.laddr.ip, conn.laddr.port)] = process.name()
        except psutil.Error:  # a process that ended meanwhile
            continue
    gcs_port = int(ray_address.rpartition(":")[2])
    assert gcs_port in {port for _, port in listening}, listening  # the GCS is among them
    assert "raylet" in listening.values(), listening
    # The one exception (docs/cluster.md): torch's TCPStore in a Ray Train worker of a running
    # trial (another test's, in this shared instance) listens on all interfaces.
    beyond = {(ip, port): name for (ip, port), name in listening.items() if not _loopback(ip)}
    assert {key: name for key, name in beyond.items() if not name.startswith("ray::RayTrainWorker")} == {}


def test_a_first_local_start_makes_a_private_token_and_prints_nothing(tmp_path):
    """A user with no token and no RAY_AUTH_MODE: Ray's notice is not printed, the token Ray uses
    is a new ~/.ray/auth_token that only the user can read."""
    code = (
        "import ray; from engine.trial.distributed import init_ray; init_ray(None, num_cpus=1); "
        "from ray._raylet import get_authentication_mode; print(int(get_authentication_mode())); ray.shutdown()"
    )
    started = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert started.returncode == 0 and started.stderr == "", started.stderr[-2000:]
    assert started.stdout.strip() == "1"  # AuthenticationMode.TOKEN
    token = tmp_path / ".ray" / "auth_token"
    assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600


def test_a_new_default_token_file_is_private(tmp_path):
    path = tmp_path / ".ray" / "auth_token"
    assert private_token_file(path)
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # Ray's generator: 256 bits in hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not private_token_file(path) and path.read_text() == token  # an existing token is kept


@pytest.mark.parametrize("content", [None, ""])
def test_a_token_path_that_holds_no_token_is_one_line(tmp_path, monkeypatch, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH=.*(cannot be read|is empty)"):
        check_token_path()


# --- a cluster started with RAY_AUTH_MODE=token -------------------------------------------------


@pytest.fixture(scope="module")
def secured_head():
    """A real head node (``ray start --head``) with token authentication and a token of its own;
    yields (address, token file)."""
    folder = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))  # short: Unix socket paths
    token = folder / "token"
    private_token_file(token)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _env(
        folder,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # 127.0.0.1 only
        RAY_USAGE_STATS_ENABLED="0",
    )
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    args = [f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={folder / 't'}", "--block"]
    head = subprocess.Popen(
        [ray_cli, "start", "--head", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as one below
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, "ray start --head ended"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the head did not listen within 90 s"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", token
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # ray start --block takes longer than that to stop on SIGTERM: its group is killed
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "auth, says",
    [
        ({}, "requires token authentication: export RAY_AUTH_MODE=token and put the cluster's token in"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused the token from RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_MODE": "token"}, "RAY_AUTH_MODE=token is set but no token was found"),
    ],
    ids=["no-auth", "wrong-token", "no-token"],
)
def test_joining_without_the_clusters_token_is_one_line(secured_head, tmp_path, auth, says):
    address, _ = secured_head
    refused = _warmstart(_env(tmp_path, **auth), *RUN, "--out", str(tmp_path / "out"), "--address", address)
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and address in lines[0], refused.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_joining_with_the_clusters_token_works(secured_head, tmp_path):
    address, token = secured_head
    code = (
        f"import ray; from engine.trial.distributed import init_ray; init_ray({address!r}); "
        "print(ray.get(ray.remote(num_cpus=1)(lambda: 6 * 7).remote()))"
    )
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    joined = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert joined.stdout.strip().splitlines()[-1] == "42"


# --- an --address where something else listens -------------------------------------------------


@pytest.fixture
def not_a_head():
    """Two listeners that are not a Ray head: a web server (what the dashboard's port 8265 is)
    and a socket that accepts connections and never answers; yields their HOST:PORTs."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the server's own log is not the command's stderr
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    yield {"web": f"127.0.0.1:{web.server_port}", "silent": f"127.0.0.1:{silent.getsockname()[1]}"}
    web.shutdown()
    web.server_close()
    silent.close()


@pytest.mark.parametrize(
    "kind, why",
    [("web", "it answers HTTP/1, as a web server or Ray's dashboard does"),
     ("silent", "it accepted the connection but did not answer within 5s")],
)  # fmt: skip
def test_an_address_where_no_ray_head_listens_is_one_line(not_a_head, kind, why, tmp_path, capsys):
    from tests.cli_support import cli, one_line

    address = not_a_head[kind]
    code, _, err = cli(capsys, *RUN, "--set", "device=cpu", "--out", str(tmp_path / "out"), "--address", address)
    assert code == 2
    assert one_line(err) == (
        f"warmstart: error: Cannot join a Ray cluster at {address!r}: what listens there is not a Ray head's GCS "
        f"port ({why}); give the head's GCS port (6379 unless `ray start --head --port` chose another; not the "
        "dashboard's 8265)."
    )
    assert not (tmp_path / "out").exists()
