"""Ray Train: one data-parallel worker group runs a whole trial.

The driver starts one ``TorchTrainer`` per trial (never one per round: a worker
group costs tens of seconds to start); every worker runs ``worker_main``, which is
the in-process round loop (``engine.trial.session.start_trial``) with a ``TorchComm``:

- training: DDP over ``torch.distributed`` (NCCL on GPUs, gloo on CPU), each rank a
  strided share of every global batch, the epoch's accuracy all-reduced;
- pool scoring: each rank scores a contiguous shard, the shards are all-gathered,
  the acquisition strategy runs on rank 0 and its choice is broadcast;
- results and checkpoints: written by rank 0 under ``--out`` after every round.

Fault tolerance needs nothing from Ray's checkpointing: when a worker dies, Ray
Train restarts the group (``scaling.max_failures`` times) and ``start_trial`` finds
the trial's own checkpoint under ``--out`` and continues after the last completed
round; a re-run of the same command after the driver died does the same.  On a
multi-node cluster ``--out`` must therefore be storage every node sees.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.compute.train import Comm
from engine.errors import ConfigError, TrialError
from engine.schema.config import Config, validate
from engine.schema.plugins import load_plugins
from engine.storage.object_store import adopt_filesystem, object_store, outage, reach
from engine.storage.store import filesystem, ray_storage
from engine.storage.uri import is_local, normalise
from engine.trial.driver import Driver
from engine.trial.progress import Relay, deliver
from engine.trial.session import start_trial

# No usage reporting, and Tune's plain (legacy) console output, which honours verbose=0:
# warmstart prints its own progress.  Ray's authentication is left to Ray and the user
# (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): see enable_token_auth.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}

# Ray's switch between single-machine mode (every Ray process listens on 127.0.0.1 only; Ray's
# default on macOS and Windows) and cluster mode (all interfaces; its default on Linux).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Where Ray reads a token from (RAY_AUTH_TOKEN first, then RAY_AUTH_TOKEN_PATH, then the default file).
TOKEN_SOURCES = "~/.ray/auth_token, in a file named by RAY_AUTH_TOKEN_PATH, or in RAY_AUTH_TOKEN"
WHERE_TOKEN = f"put the cluster's token in {TOKEN_SOURCES} (on the head node, `ray get-auth-token` prints it)"


class TrialFailed(TrialError):
    """A trial that failed for good; the message is one line for the user."""


def error_line(exc: BaseException) -> str:
    """The worker's own exception: the last line naming an error in the traceback text."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(exc).__name__)[:300]


class TorchComm(Comm):
    """Collectives over the process group Ray Train set up."""

    def __init__(self, device: torch.device, sync_batchnorm: bool = False) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        self.sync_batchnorm = sync_batchnorm

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:  # nothing to synchronise: no per-step all-reduce
            return model

        if self.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # DDP also broadcasts rank 0's parameters and buffers once here; the init
        # strategy already made them identical (seeded per round), and check_same proves it.
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj):
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def all_gather_cat(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate each rank's [n_r, ...] shard in rank order (shards may differ in size)."""
        sizes = [None] * self.world_size
        dist.all_gather_object(sizes, (local.shape[0], tuple(local.shape[1:])))
        trailing = next(shape for rows, shape in sizes if rows > 0)
        biggest = max(rows for rows, _ in sizes)
        padded = torch.zeros((biggest, *trailing), dtype=local.dtype, device=local.device)
        if local.shape[0]:
            padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        out = torch.cat([g[:rows] for g, (rows, _) in zip(gathered, sizes, strict=True)])
        assert out.shape[0] == total, (out.shape, total)
        return out

    def check_same(self, model: nn.Module, what: str) -> None:
        """Raise when ranks hold different parameters (one small all-gather)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
            fingerprint = torch.stack(
                [flat.sum(), (flat * torch.arange(1, flat.numel() + 1, device=flat.device)).sum()]
            )
        everyone = [torch.empty_like(fingerprint) for _ in range(self.world_size)]
        dist.all_gather(everyone, fingerprint)
        if any(not torch.equal(everyone[0], f) for f in everyone[1:]):
            raise RuntimeError(f"{what}: ranks hold different parameters")


def worker_main(train_config: dict) -> None:
    """The body of every Ray Train worker: the round loop for the whole trial."""
    import ray.train

    data = train_config["config"]
    load_plugins(data["plugins"])  # strategies users registered, before validation
    cfg = validate(data)
    context = ray.train.get_context()
    if cfg.scaling.gpus_per_worker > 0:
        device = torch.device("cuda", context.get_local_rank() if torch.cuda.device_count() > 1 else 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    comm = TorchComm(device, cfg.scaling.sync_batchnorm)
    out = train_config["out"]
    adopt_filesystem(out, train_config["filesystem"])  # the driver's, never this worker's environment
    channel = train_config["progress"]
    reporter = Relay(channel) if comm.rank == 0 and channel is not None else None
    lease = train_config["lease"]
    with Driver(
        [start_trial(cfg, out, comm=comm, device=device, reporter=reporter, lock=False, lease=lease)]
    ) as driver:
        driver.run()


class _AuthNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on for a new local instance (it says how
    to turn it off); every other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _hush_auth_notice() -> None:
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _AuthNotice) for f in log.filters):
        log.addFilter(_AuthNotice())


def private_token_file(path: Path) -> bool:
    """Create Ray's default token file at ``path`` readable by its owner only (``ray.init`` and
    ``ray get-auth-token --generate`` create it with the umask's permissions, often world-readable,
    and whoever reads the token can run code on the instance).  False when it exists already."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())
    return True


def enable_token_auth() -> None:
    """Ray's token authentication for a Ray instance this process starts, as ``ray.init`` turns it
    on for a new local instance since Ray 2.59: RAY_AUTH_MODE=token in this process and the
    processes it starts, and a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token,
    created here, private, when none is set).  Ray's notice saying so is not printed.  A user who
    exported RAY_AUTH_MODE=disabled keeps it disabled (Ray's own opt-out)."""
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, Config, get_authentication_mode

    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    check_token_path()
    _hush_auth_notice()
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        if private_token_file(Path.home() / ".ray" / "auth_token"):
            AuthenticationTokenLoader.instance().reset_cache()
    enable_token_auth_by_default()  # unset: sets RAY_AUTH_MODE=token and reloads Ray's configuration
    if get_authentication_mode() != AuthenticationMode.TOKEN:  # exported after Ray read its configuration
        Config.initialize("")
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def check_token_path() -> None:
    """Refuse a RAY_AUTH_TOKEN_PATH that names no readable, non-empty file (Ray would fail later,
    in a Ray process, or in a long message)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and not os.environ.get("RAY_AUTH_TOKEN"):
        try:
            empty = not Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {exc.strerror or exc}.") from None
        if empty:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path} is empty; it must hold the Ray cluster's token.")


def is_loopback(address: str) -> bool:
    """Whether a HOST:PORT names this machine's loopback interface."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Start Ray's processes in single-machine mode, every one listening on 127.0.0.1 only (by
    default on Linux the GCS, the raylet and every worker listen on all interfaces, and
    ``ray.init(_node_ip_address="127.0.0.1")`` is resolved back to the machine's address).  A user
    who set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER keeps Ray's behaviour for it."""
    from ray._private import ray_constants

    if LOOPBACK_SWITCH in os.environ:
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER  # read once, when Ray was imported
    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        os.environ.pop(LOOPBACK_SWITCH, None)
        ray_constants.ENABLE_RAY_CLUSTER = before


def auth_refusal(address: str) -> str:
    """The line for a cluster at ``address`` that refused this process: what it lacks, and where
    Ray reads what it needs."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return (
            f"The Ray cluster at {address!r} requires token authentication: export RAY_AUTH_MODE=token and "
            f"{WHERE_TOKEN}."
        )
    source = (
        "RAY_AUTH_TOKEN"
        if os.environ.get("RAY_AUTH_TOKEN")
        else os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    )
    return f"The Ray cluster at {address!r} refused the token from {source} (RAY_AUTH_MODE=token); {WHERE_TOKEN}."


def check_auth(address: str, timeout: float = 5.0) -> None:
    """Ask the cluster's GCS at HOST:PORT one question with the credentials ``ray.init`` would
    send; a refusal is one line naming what to set (``ray.init`` itself retries for 20 seconds,
    printing a warning a second, then says only that it failed to connect)."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    if address in _ADMITTED:  # one question per address and process (it takes a second or two)
        return
    check_token_path()
    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError:  # RAY_AUTH_MODE=token and no token anywhere
        raise ConfigError(
            f"RAY_AUTH_MODE=token is set but no token was found to join the Ray cluster at {address!r}: {WHERE_TOKEN}."
        ) from None
    try:
        # A made-up cluster id: the client asks nothing before the question (asking for the id
        # is what ray.init retries); the token is checked before the id, which is then refused.
        GcsClient(address=address, cluster_id="00" * 28).internal_kv_get(b"warmstart", None, timeout=timeout)
    except AuthenticationError as exc:
        if "InvalidAuthToken" in str(exc):
            raise ConfigError(auth_refusal(address)) from None
        _ADMITTED.add(address)  # the token passed; the made-up cluster id did not
    except Exception as exc:  # noqa: BLE001 - a timeout is ray.init's to report
        # Another gRPC server (a raylet's port, a proxy) answers at once, with an error of its own.
        if type(exc).__name__ == "RpcError" and "Timed out" not in str(exc):
            raise ConfigError(not_a_head(address, f"it answered: {error_line(exc)}")) from None
    else:
        _ADMITTED.add(address)


_ADMITTED: set[str] = set()  # addresses whose cluster accepted this process's credentials


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join ``address`` or start a quiet local instance (no usage stats).

    A local instance has Ray's token authentication on (enable_token_auth) and listens on
    127.0.0.1 only (loopback_only); joining a cluster uses the user's own RAY_AUTH_* settings, and
    a cluster that refuses them is one line saying what to set.  An address that does not answer
    fails within seconds, naming the address; a local instance gets a reaper
    (engine/trial/reaper.py), so that no Ray process outlives a driver that is killed."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    _hush_auth_notice()  # also when 'auto' finds a token and Ray turns token mode on for it
    if address:
        check_address(address)  # also when this process already runs Ray: the address given must answer
    if ray.is_initialized():
        return
    # Workers' and Ray's own console output stays in Ray's log files (the session's
    # logs/ folder); progress reaches the driver through the results store instead.
    quiet = {"logging_level": "WARNING", "log_to_driver": False}
    if address:
        # Ray replaces a loopback host by the machine's address, where an instance started in
        # single-machine mode (loopback_only) does not listen; joined in that mode, it stays 127.0.0.1.
        with loopback_only() if is_loopback(address) else contextlib.nullcontext():
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"Cannot join the Ray cluster at {address!r}: {error_line(exc)}") from None
        return
    enable_token_auth()
    with loopback_only():
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **quiet)
    session = ray._private.worker._global_node.get_session_dir_path()
    if sys.platform.startswith("linux"):
        subprocess.Popen(
            [sys.executable, "-m", "engine.trial.reaper", str(os.getpid()), session],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the driver's process group: a Ctrl-C must not end it first
        )


def check_shared_out(out: str | None, address: str | None, shared_fs: bool = False) -> None:
    """Refuse a local ``out`` on a Ray cluster of several nodes, before anything is written:
    each trial would write its rows and checkpoints on the disk of whichever node runs it.
    ``shared_fs``: the user says the path is mounted at the same place on every node."""
    import ray

    if out is not None:
        out = normalise(out)  # file:///PATH is a local folder too
    if out is None or not is_local(out) or shared_fs or (not address and not ray.is_initialized()):
        return  # an object store, a shared file system, or the local instance (one node)
    init_ray(address)
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if nodes > 1:
        raise ConfigError(
            f"--out {out} is a local folder, but the Ray cluster has {nodes} nodes, and each trial would write its "
            f"rows on the disk of the node that runs it; use an object store (--out s3://BUCKET/PREFIX), or pass "
            f"--shared-fs if {out} is on a file system mounted at the same path on every node."
        )


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, within seconds, a HOST:PORT where nothing listens, or whose cluster refuses this
    process's credentials ('auto' and ray:// URIs are Ray's to resolve; it fails fast when no
    cluster runs)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"The --address must be 'auto' or HOST:PORT (a Ray head's GCS port, e.g. 6379). Got {address!r}."
        )
    try:
        answer = _grpc_answer(host, int(port), timeout)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"Cannot reach a Ray cluster at {address!r}: {reason} (is a head node running there?)."
        ) from None
    if answer is not None:
        raise ConfigError(not_a_head(address, answer))
    check_auth(address, timeout)


def not_a_head(address: str, why: str) -> str:
    return (
        f"Cannot join a Ray cluster at {address!r}: what listens there is not a Ray head's GCS port ({why}); give "
        "the head's GCS port (6379 unless `ray start --head --port` chose another; not the dashboard's 8265)."
    )


# The client preface of HTTP/2 and an empty SETTINGS frame: a gRPC server (a Ray head's GCS)
# answers with its own SETTINGS frame (frame type 4, the fourth byte of its 9-byte header).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _grpc_answer(host: str, port: int, timeout: float) -> str | None:
    """None when HOST:PORT answers as a gRPC server (a Ray GCS does), else why not: an HTTP/1
    server (the dashboard, say) or a listener that never answers would keep ``ray.init``
    waiting for minutes, printing warnings.  OSError when nothing listens.  With Ray's TLS on
    (RAY_USE_TLS) the cleartext preface is not asked: Ray tells."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return None
        conn.settimeout(timeout)
        try:
            conn.sendall(H2_PREFACE)
            reply = b""
            while len(reply) < 9:
                chunk = conn.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            return f"it accepted the connection but did not answer within {timeout:g}s"
        except OSError as exc:
            return f"it dropped the connection ({exc.strerror or type(exc).__name__})"
    if len(reply) == 9 and reply[3] == 4:
        return None
    if reply.startswith(b"HTTP/") or reply.lstrip()[:1] == b"<":
        return "it answers HTTP/1, as a web server or Ray's dashboard does"
    return "it closed the connection" if not reply else "it does not answer as a gRPC server"


def check_resources(
    workers: int, gpus_per_worker: float, address: str | None, timeout: float, what: str | None = None
) -> None:
    """Refuse a request the cluster can never meet: at once on the local instance (its
    resources are fixed), after ``timeout`` seconds of waiting, with a visible message, on
    a joined cluster (an autoscaler may add nodes)."""
    import ray

    need = {"CPU": float(workers), **({"GPU": workers * gpus_per_worker} if gpus_per_worker else {})}

    def short() -> dict[str, float]:
        have = ray.cluster_resources()
        return {k: v for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}

    lacking = short()
    if not lacking:
        return
    have = ray.cluster_resources()
    described = ", ".join(f"{need[k]:g} {k}" for k in need)
    has = ", ".join(f"{have.get(k, 0):g} {k}" for k in need)
    if not address:
        who = f"{what}: " if what else ""
        raise ConfigError(
            f"{who}{workers} worker(s) need {described} (1 CPU and {gpus_per_worker:g} GPU each), but the local Ray "
            f"instance has {has}; use fewer workers or GPUs, or join a bigger cluster with --address."
        )
    print(f"waiting up to {timeout:.0f}s for the cluster to offer {described} (it has {has})...", file=sys.stderr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        if not short():
            return
    raise ConfigError(
        f"The cluster at {address} did not offer {described} within {timeout:.0f}s (scaling.resource_timeout); "
        f"it has {has}."
    )


def run_trial_on_ray(
    cfg: Config, out: str, address: str | None = None, reporter=None, lease: str | None = None
) -> None:
    """Run the whole trial as one TorchTrainer with ``scaling.workers`` workers; ``lease``:
    the driver's on an object store (TrialStore.lock), under which rank 0 commits."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    workers, gpus = cfg.scaling.workers, cfg.scaling.gpus_per_worker
    init_ray(address)  # engine.trial.runner.run_trial has checked the address and the resources already
    # The one progress channel: rank 0's reporter calls, relayed to ``reporter`` here (no CPU of its own).
    channel = Queue(actor_options={"num_cpus": 0}) if reporter is not None else None
    location = out if "://" in out else filesystem(out)[1]  # absolute: workers run elsewhere
    log_ray_to_file()
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={
            "config": {**cfg.to_dict(), "trial_id": cfg.trial_id()},
            "out": location,
            "filesystem": object_store(location),  # endpoint and credentials, explicitly
            "lease": lease,
            "progress": channel,  # rank 0's reports, to this process's reporter
        },
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus > 0, resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})}
        ),
        run_config=RunConfig(
            name=cfg.trial_id(),  # deterministic: a re-run finds the same trial
            **ray_storage(location, "ray"),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
        ),
    )
    done = threading.Event()
    if reporter is not None:
        relay = threading.Thread(target=deliver, args=(channel, reporter, done), daemon=True)
        relay.start()
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        down = _store_down(location)
        if down is not None:  # the workers' last failure names the probe, not the store: ask it here
            raise outage(down, location) from exc
        raise TrialFailed(
            f"trial {cfg.trial_id()} failed on Ray Train after {cfg.scaling.max_failures} restart(s): "
            f"{error_line(exc)} (completed rounds are saved; re-run the same command to resume)"
        ) from exc
    finally:
        done.set()
        if reporter is not None:
            relay.join()  # every report sent before the group ended, handed on
            channel.shutdown()


def _store_down(location: str) -> OSError | None:
    """The error of an object store at ``location`` that does not answer now (its first-contact
    bound), else None: a Ray Train trial that failed for that reason ends as an outage, in one
    line with the resume command, as a suite's trial does."""
    if "://" not in location:
        return None
    try:
        reach(location)
    except OSError as exc:
        return exc
    return None


def log_ray_to_file() -> None:
    """Ray Tune's and Ray Train's own log records on the driver (a failed sync to a store that
    is down, a trial's traceback) go to ``warmstart-driver.log`` in Ray's log folder of the
    session, not to the console: warmstart reports each failure in one line instead."""
    import logging

    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:  # a Ray Client connection: no log folder here
        return
    path = os.path.join(node.get_logs_dir_path(), "warmstart-driver.log")
    for name in ("ray.tune", "ray.train"):
        logger = logging.getLogger(name)
        if any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
            continue
        for old in [h for h in logger.handlers if getattr(h, "warmstart", False)]:  # an earlier session's
            logger.removeHandler(old)
        handler = logging.FileHandler(path, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
        handler.warmstart = True
        logger.addHandler(handler)
        logger.propagate = False
    _raylet_messages_to(path)


_RAYLET_LOG: list[str] = []  # where the raylets' messages to this driver go (the session's log)


def _raylet_messages_to(path: str) -> None:
    """A raylet's message to the driver (a node lost: its last log lines and some 40 lines of
    state dump, each time) becomes one console line pointing at ``path``, where it is kept
    whole.  Ray has no setting for these (``log_to_driver`` leaves them on), so the function
    that prints them is wrapped; without it (another Ray version), they print as before."""
    import ray._private.worker as worker

    original = getattr(worker, "print_to_stdstream", None)
    _RAYLET_LOG[:] = [path]
    if original is None or getattr(original, "warmstart", False):
        return

    def to_log(data, *args, **kwargs):
        if not isinstance(data, dict) or data.get("pid") != "raylet":
            return original(data, *args, **kwargs)
        lines = [str(line) for line in data.get("lines", [])]
        with open(_RAYLET_LOG[0], "a") as log:
            log.write("\n".join(lines) + "\n")
        first = next((line.strip() for line in lines if line.strip()), "a message")
        print(f"(ray) {first.split('. ')[0].split(' because ')[0][:160]}; details in {_RAYLET_LOG[0]}", file=sys.stderr)

    to_log.warmstart = True
    worker.print_to_stdstream = to_log
