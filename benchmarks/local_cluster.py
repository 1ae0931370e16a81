"""A multi-node Ray cluster and an S3-compatible server on this machine, to rehearse a real
cluster before paying for one (docs/cluster.md), and to test and measure the multi-node path
(tests/suite/test_cluster.py, benchmarks/cluster_scaling.py).

    python -m benchmarks.local_cluster [--nodes 2] [--cpus-per-node 1] [--bucket warmstart]

starts a head node with no CPUs, ``--nodes`` worker nodes, and a moto S3 server with the
bucket, prints the ``--address`` and the AWS_* variables to use, and runs until Ctrl-C,
which stops every process it started.

The nodes are ``ray.cluster_utils.Cluster`` nodes, as Ray's own tests make them: real
raylets and object stores, each node a separate set of processes, all on this host.  Their
session folder is a short path under /tmp (Unix socket paths are limited to 107 bytes), and
the cluster's address is not written to /tmp/ray/ray_current_cluster, so a plain
``ray.init()`` elsewhere on this machine does not join it by accident.  As the engine's own
local instance, every node listens on 127.0.0.1 only and has Ray's token authentication on
(RAY_AUTH_MODE=token, the token in ~/.ray/auth_token unless RAY_AUTH_TOKEN or
RAY_AUTH_TOKEN_PATH names another): a driver joins it with RAY_AUTH_MODE=token exported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

SUITE = "docs/examples/laptop_suite.yaml"  # four tiny trials (docs/cluster.md, "A cluster on your laptop")
QUIET = {"RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = "127.0.0.1"  # every node's address: nothing listens beyond this machine
# A node that is gone is noticed within seconds, not the default half minute.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


class LocalCluster:
    """A head with no CPUs and worker nodes of ``cpus_per_node`` CPUs each.  ``node_env``:
    the environment every node's processes start with (and so every Ray worker on them),
    instead of this process's: what a driver exports does not reach them, as on a real cluster."""

    def __init__(self, worker_nodes: int = 2, cpus_per_node: int = 1, node_env: dict[str, str] | None = None) -> None:
        from ray.cluster_utils import Cluster

        from engine.trial.distributed import enable_token_auth

        for key, value in QUIET.items():
            os.environ.setdefault(key, value)
        enable_token_auth()  # here and in every node's processes, which start with this environment
        self.cpus_per_node, self.node_env = cpus_per_node, node_env
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        head = {
            "num_cpus": 0,
            "include_dashboard": False,
            "node_ip_address": LOOPBACK,
            "temp_dir": self.temp_dir,
            "object_store_memory": 100 * 2**20,
            "_system_config": FAST_HEALTH_CHECKS,
        }
        with self._environment(), mock.patch("ray._private.utils.write_ray_address"):
            self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.workers = [self.add_worker() for _ in range(worker_nodes)]

    @property
    def address(self) -> str:
        return self.cluster.address

    @contextlib.contextmanager
    def _environment(self) -> Iterator[None]:
        if self.node_env is None:
            yield
            return
        with mock.patch.dict(os.environ, self.node_env):
            yield

    def add_worker(self):
        with self._environment():
            node = self.cluster.add_node(
                num_cpus=self.cpus_per_node, object_store_memory=150 * 2**20, node_ip_address=LOOPBACK
            )
        self.cluster.wait_for_nodes()
        return node

    def node_id(self, node) -> str:
        return node.node_id

    def remove_worker(self, node) -> None:
        """Lose a worker node: its raylet and every process on it are killed at once."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]  # what a driver exports to use it

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@contextlib.contextmanager
def s3_server(bucket: str = "warmstart", port: int = 0) -> Iterator[S3Server]:
    """A moto S3 server (real HTTP, in a thread of this process) with one empty bucket."""
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        endpoint = f"http://{host}:{bound}"
        env = {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        fs = pafs.S3FileSystem(
            endpoint_override=f"{host}:{bound}",
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(bucket)
        yield S3Server(endpoint, bucket, env)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--bucket", default="warmstart")
    parser.add_argument("--s3-port", type=int, default=0, help="the S3 server's port (default: any free one)")
    args = parser.parse_args()
    with s3_server(args.bucket, args.s3_port) as s3:
        cluster = LocalCluster(args.nodes, args.cpus_per_node)
        try:
            print(f"Ray cluster: a head with no CPUs and {args.nodes} worker node(s) of {args.cpus_per_node} CPU(s)")
            print(f"S3 server: {s3.endpoint}, bucket {s3.bucket}")
            print("in another terminal:")
            if os.environ.get("RAY_AUTH_MODE") == "token":  # the token itself: ~/.ray/auth_token, found by Ray
                print("  export RAY_AUTH_MODE=token")
            for key, value in s3.env.items():
                print(f"  export {key}={value}")
            print(f"  warmstart suite {SUITE} --address {cluster.address} --out s3://{s3.bucket}/laptop")
            print("Ctrl-C stops the cluster and the S3 server", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    main()
