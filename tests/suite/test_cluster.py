"""A real multi-node cluster with results on a real S3-compatible server, on this machine.

One Ray cluster for the module (``benchmarks.local_cluster``: a head with no CPUs and two
worker nodes of one CPU each, as Ray's own tests build them) and one moto S3 server with a
versioned bucket, so that "written once" is counted, not assumed.  The nodes start with a
*wrong* endpoint and wrong credentials in their environment; only the drivers (subprocesses,
as `warmstart suite` on a real cluster) get the server's: every trial that writes to the
bucket got its filesystem from the driver, never from its own environment.

Drivers run in subprocesses so that this process never joins the cluster (other modules
share one local Ray instance in this process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.local_cluster import SUITE, LocalCluster, s3_server
from engine.cli import main

# A multi-node Ray cluster and an S3 server for the module.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What the nodes' processes see: an endpoint where nothing listens, keys that are not the server's.
WRONG_ENV = {
    "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "not-the-drivers",
    "AWS_SECRET_ACCESS_KEY": "not-the-drivers",
}
TINY = {"dataset": {"name": "digits"}, "rounds": {"initial": 100, "per_round": 50, "max_rounds": 3}}

# An init strategy that takes a second, so that a node can be lost in the middle of a trial.
SLOW_PLUGIN = '''
import time
from strategies.init import register

@register("slow_warm")
def slow_warm(prev, fresh):
    """Warm start, one second late."""
    time.sleep(1.0)
    return prev
'''


@pytest.fixture(scope="module")
def s3():
    import boto3

    with s3_server("warmstart") as server:
        client = boto3.client("s3", endpoint_url=server.endpoint, **_boto_keys(server))
        client.put_bucket_versioning(Bucket="warmstart", VersioningConfiguration={"Status": "Enabled"})
        server.client = client
        yield server


@pytest.fixture(scope="module")
def cluster(s3):
    cluster = LocalCluster(worker_nodes=2, cpus_per_node=1, node_env=WRONG_ENV)
    yield cluster
    cluster.shutdown()


def _boto_keys(server) -> dict:
    env = server.env
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def _driver_env(s3) -> dict:
    return {**os.environ, **s3.env, "PYTHONPATH": REPO, "AWS_ENDPOINT_URL": s3.env["AWS_ENDPOINT_URL_S3"]}


def _warmstart(s3, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=_driver_env(s3),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _suite(tmp_path, name: str, seeds: int, rounds: int, init: str = "warm") -> str:
    path = tmp_path / f"{name}.yaml"
    base = {**TINY, "rounds": {**TINY["rounds"], "max_rounds": rounds}, "init": {"name": init}}
    path.write_text(
        textwrap.dedent(f"""
        name: {name}
        base: {json.dumps(base)}
        grid:
          seed: {list(range(seeds))}
        """)
    )
    return str(path)


def _versions(s3, prefix: str) -> dict[str, int]:
    """How many times each row object under ``prefix`` was written (the bucket is versioned)."""
    counts: dict[str, int] = {}
    for page in s3.client.get_paginator("list_object_versions").paginate(Bucket=s3.bucket, Prefix=f"{prefix}/"):
        for version in page.get("Versions", []):
            if version["Key"].endswith(".parquet"):
                counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def _rows(uri: str) -> pd.DataFrame:
    return pd.read_parquet(uri).sort_values(["trial_id", "round"]).reset_index(drop=True)


def _each_round_once(s3, prefix: str, table: pd.DataFrame, trials: int, rounds: int) -> None:
    assert len(table) == trials * rounds
    assert not table.duplicated(["trial_id", "round"]).any()
    assert sorted(table.groupby("trial_id")["round"].apply(list).tolist()) == [list(range(1, rounds + 1))] * trials
    versions = _versions(s3, prefix)
    assert len(versions) == trials * rounds
    assert set(versions.values()) == {1}, {k: v for k, v in versions.items() if v > 1}


# --- a suite spread over two nodes ------------------------------------------------------------


@pytest.fixture(scope="module")
def spread(cluster, s3):
    """The four trials of docs/cluster.md's "A cluster on your laptop", run once for the tests below."""
    done = _warmstart(s3, "suite", SUITE, "--address", cluster.address, "--out", s3.uri("spread"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_nodes_do_not_have_the_drivers_endpoint(cluster, s3):
    """The premise of the module: a trial that read its own environment could not reach the bucket."""
    code = (
        "import os, ray; from engine.trial.distributed import init_ray; init_ray(os.environ['ADDRESS']); "
        "print(ray.get(ray.remote(num_cpus=1)(lambda: os.environ.get('AWS_ENDPOINT_URL_S3')).remote()))"
    )
    env = {**_driver_env(s3), "ADDRESS": cluster.address}
    seen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert seen.stdout.strip().splitlines()[-1] == WRONG_ENV["AWS_ENDPOINT_URL_S3"], seen.stderr[-2000:]


def test_suite_spreads_over_both_nodes_and_writes_each_round_once(spread, cluster, s3, aws):
    table = _rows(s3.uri("spread"))
    _each_round_once(s3, "spread", table, trials=4, rounds=3)
    workers = {node.node_id for node in cluster.workers}
    assert set(table["node"]) == workers  # both worker nodes trained rows; the head (no CPUs) none
    assert (table.groupby("trial_id")["node"].nunique() == 1).all()  # a trial stays on its node
    assert set(table["world_size"]) == {1}


def test_report_and_check_read_the_bucket(spread, s3, aws, tmp_path, capsys):
    assert main(["check", s3.uri("spread")]) == 0
    assert "4 trial(s) checked under s3://warmstart/spread: all intact" in capsys.readouterr().out
    assert main(["report", s3.uri("spread"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").exists()
    from engine.analysis.results import load

    assert sorted(load(s3.uri("spread"))["round"].unique()) == [1, 2, 3]


def test_the_laptop_cluster_of_the_docs_starts_prints_its_commands_and_stops():
    """docs/cluster.md's "A cluster on your laptop": the command, its output as shown there, and
    Ctrl-C stopping what it started (the suite it prints is the one ``spread`` runs)."""
    helper = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.local_cluster", "--nodes", "1"],
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    lines = []
    while not lines or not lines[-1].startswith("Ctrl-C"):
        line = helper.stdout.readline()
        assert line, "the helper ended before printing its commands"
        lines.append(line.rstrip("\n"))
    helper.send_signal(signal.SIGINT)
    assert helper.wait(timeout=60) == 0
    doc = (Path(REPO) / "docs" / "cluster.md").read_text()
    assert "python -m benchmarks.local_cluster --nodes 2" in doc
    shown = doc.split("head node's address):\n\n```text\n")[1].split("```")[0].splitlines()
    port = lines[1].split(":")[-1].split(",")[0]
    address = lines[-2].split("--address ")[1].split()[0]
    printed = [line.replace(address, "HEAD_IP:GCS_PORT").replace(port, "PORT") for line in lines]
    assert printed == [line.replace("2 worker", "1 worker") for line in shown]
    assert f"warmstart suite {SUITE} --address HEAD_IP:GCS_PORT --out s3://warmstart/laptop" in doc


# --- a local --out on several nodes -------------------------------------------------------------


def test_a_local_out_on_several_nodes_is_refused_before_anything_is_written(cluster, s3, tmp_path):
    out = tmp_path / "local"
    suite = _suite(tmp_path, "local", seeds=2, rounds=2)
    run = ["run", "--set", "dataset.name=digits"]
    # file:///PATH is the same local folder (engine/storage/uri.py), refused the same way.
    for args, where in ((["suite", suite], str(out)), (run, str(out)), (run, f"file://{out}")):
        done = _warmstart(s3, *args, "--address", cluster.address, "--out", where, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"warmstart: error: --out {out} is a local folder, but the Ray cluster has 3 nodes")
        assert "--out s3://BUCKET/PREFIX" in line and "--shared-fs" in line
        assert not out.exists()


# --- Ray Train across nodes ----------------------------------------------------------------------


def test_two_worker_trial_across_two_nodes_matches_one_node(cluster, s3, aws):
    from engine.trial.runner import run_trial

    sets = ["dataset.name=digits", "rounds.per_round=50", "rounds.max_rounds=3"]
    args = [f"--set={s}" for s in sets]
    done = _warmstart(s3, "run", *args, "--workers", "2", "--address", cluster.address, "--out", s3.uri("ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    # Each node has one CPU and each worker asks for one: the two ranks ran on two nodes.
    local = pd.DataFrame(run_trial(None, sets=sets)).sort_values("round").reset_index(drop=True)
    ddp = _rows(s3.uri("ddp"))
    assert list(ddp.columns) == list(local.columns)
    assert ddp["round"].tolist() == [1, 2, 3]
    assert set(ddp["world_size"]) == {2} and set(local["world_size"]) == {1}
    assert ddp["node"].iloc[0] in {node.node_id for node in cluster.workers}
    assert ddp["n_labeled"].tolist() == local["n_labeled"].tolist() == [100, 150, 200]
    assert [list(a) for a in ddp["acquired"]] == [list(a) for a in local["acquired"]]
    # The equivalence of tests/trial/test_distributed.py: the same optimisation up to summation order.
    assert (ddp["test_acc"] - local["test_acc"]).abs().max() <= 0.03
    assert (ddp["epochs"] - local["epochs"]).abs().max() <= 3
    assert _versions(s3, "ddp") and set(_versions(s3, "ddp").values()) == {1}


# --- faults: the driver killed, a node lost ------------------------------------------------------


def _start(s3, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        env=_driver_env(s3),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def _wait_for_rows(s3, prefix: str, driver: subprocess.Popen, until, timeout: float = 240) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        keys = [k for k in _versions(s3, prefix)]
        found = until(keys)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no rows under {prefix} in {timeout}s")


def _wait_until_quiet(s3, prefix: str, quiet: float = 4.0, timeout: float = 60) -> None:
    """Until no row object has appeared under ``prefix`` for ``quiet`` seconds (a round takes one)."""
    last, since, deadline = _versions(s3, prefix), time.time(), time.time() + timeout
    while time.time() - since < quiet and time.time() < deadline:
        time.sleep(0.5)
        now = _versions(s3, prefix)
        if now != last:
            last, since = now, time.time()


def test_driver_killed_then_resume_finishes_the_suite_on_the_bucket(cluster, s3, aws, tmp_path):
    """docs/guarantees.md: a round cut off between its row and its checkpoint is re-run on
    resume, checked against its saved row, and keeps it: every row object is written once,
    wherever the kill lands (the versioned bucket counts the writes)."""
    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW_PLUGIN)
    suite = _suite(tmp_path, "resumed", seeds=2, rounds=3, init="slow_warm")
    args = ["suite", suite, "--plugin", str(plugin), "--address", cluster.address, "--out", s3.uri("resumed")]
    driver = _start(s3, *args)
    _wait_for_rows(s3, "resumed", driver, lambda keys: keys)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    _wait_until_quiet(s3, "resumed")  # Ray ends the dead driver's trials; none writes any more
    before = _rows(s3.uri("resumed"))
    assert 1 <= len(before) < 6, "the driver should die mid-suite"

    resumed = _warmstart(s3, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    table = _rows(s3.uri("resumed"))
    _each_round_once(s3, "resumed", table, trials=2, rounds=3)
    # The rows of the killed run are kept as they were, not recomputed.
    kept = table.merge(before[["trial_id", "round", "train_seconds"]], on=["trial_id", "round"])
    assert len(kept) == len(before) and (kept["train_seconds_x"] == kept["train_seconds_y"]).all()


def test_a_lost_node_moves_its_trials_to_the_other_node_from_their_last_round(cluster, s3, aws, tmp_path):
    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW_PLUGIN)
    suite = _suite(tmp_path, "lost", seeds=4, rounds=4, init="slow_warm")
    driver = _start(s3, "suite", suite, "--plugin", str(plugin), "--address", cluster.address, "--out", s3.uri("lost"))
    doomed, survivor = cluster.workers

    # As soon as a trial on the doomed node has completed a round (and has more to go), lose the node.
    def first_row_of_doomed(keys):
        if not keys:
            return None
        table = _rows(s3.uri("lost"))
        on_doomed = table[table["node"] == doomed.node_id]
        return list(on_doomed["trial_id"].unique()) if len(on_doomed) else None

    moved = _wait_for_rows(s3, "lost", driver, first_row_of_doomed)
    cluster.remove_worker(doomed)
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-4000:]
    assert "[state-dump]" not in output and "Last 20 lines of the Raylet logs" not in output  # kept in Ray's log

    table = _rows(s3.uri("lost"))
    _each_round_once(s3, "lost", table, trials=4, rounds=4)
    assert set(table["node"]) == {doomed.node_id, survivor.node_id}
    for trial_id in moved:
        nodes = table[table["trial_id"] == trial_id].sort_values("round")["node"].tolist()
        # Its first rounds on the lost node, the rest on the survivor: continued, not restarted.
        assert nodes[0] == doomed.node_id and nodes[-1] == survivor.node_id
        assert nodes == sorted(nodes, key=lambda n: n != doomed.node_id)
    cluster.workers.append(cluster.add_worker())  # two worker nodes again for whatever runs next


# --- bad input and the Python API, on the bucket (no cluster) --------------------------------------


def test_api_writes_resumes_and_reads_the_bucket(aws, s3):
    import warmstart as ws

    uri = s3.uri("api")
    first = ws.run_trial(TINY, uri)
    assert first["round"].tolist() == [1, 2, 3]
    trial = ws.Trial({**TINY, "rounds": {**TINY["rounds"], "max_rounds": 4}}, out=uri)
    assert trial.round == 3  # resumed from the bucket
    assert [r.round for r in trial] == [4]
    assert ws.load(uri)["round"].tolist() == [1, 2, 3, 4]
    assert pd.read_parquet(uri)["round"].sort_values().tolist() == [1, 2, 3, 4]


def test_a_second_run_of_a_trial_on_the_bucket_stops_the_first_before_its_next_commit(aws, s3):
    from engine.storage.store import TrialBusy, TrialStore

    uri = s3.uri("lease")
    first = TrialStore(uri, "t")
    first.lock()
    first.save_status({"round": 1, "rounds": 3})
    # Another process takes the trial over (a retry after a lost node, or a second user).
    # (os._exit: a holder that is still running, or was killed; one that exits releases its lease.)
    code = (
        "import os, sys; from engine.storage.store import TrialStore; TrialStore(sys.argv[1], 't').lock(); os._exit(0)"
    )
    taken = subprocess.run([sys.executable, "-c", code, uri], env=_driver_env(s3), capture_output=True, text=True)
    assert taken.returncode == 0, taken.stderr
    with pytest.raises(
        TrialBusy,
        match=r"Trial t on s3://warmstart/lease was taken over by pid \d+ on host .*; this run "
        r"stopped before writing the status of round 2",
    ):
        first.save_status({"round": 2, "rounds": 3})
    assert json.loads(
        s3.client.get_object(Bucket="warmstart", Key="lease/_warmstart/t/status.json")["Body"].read()
    ) == {
        "round": 1,
        "rounds": 3,
    }
    from engine.storage.check import check_trial

    assert any(n.startswith('a run holds the trial\'s lease ({"pid": ') for n in check_trial(uri, "t").notes)


@pytest.fixture
def enforced_credentials(s3, monkeypatch):
    """The server checks signatures and policies (moto's IAM); yields a user who may only read."""
    import boto3
    import moto.settings

    iam = boto3.client("iam", endpoint_url=s3.endpoint, **_boto_keys(s3))
    name = f"reader{time.monotonic_ns()}"
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName=name, PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    return key


@pytest.mark.parametrize(
    "case, cause",
    [
        ("unreachable", "the endpoint http://127.0.0.1:9 does not answer"),
        ("no bucket", "the bucket 'missing' does not exist"),
        ("wrong key", "the credentials are not valid (AWS_ACCESS_KEY_ID is unknown there)"),
        ("wrong secret", "the credentials are not valid (AWS_SECRET_ACCESS_KEY does not match the key id)"),
        ("read-only", "access denied: these credentials may not write there"),
    ],
)
def test_bad_bucket_input_is_one_line_before_any_training(case, cause, aws, s3, request, monkeypatch, capsys):
    uri = s3.uri(f"bad-{case.replace(' ', '-')}")
    if case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    elif case == "no bucket":
        uri = "s3://missing/results"
    elif case == "wrong key":
        request.getfixturevalue("enforced_credentials")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODY")
    else:
        key = request.getfixturevalue("enforced_credentials")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" if case == "wrong secret" else key["SecretAccessKey"])
    assert main(["run", "--set", "dataset.name=digits", "--out", uri]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no trial header: nothing ran
    assert (
        captured.err
        == f"warmstart: error: Cannot write results to {uri}: {cause}; check the bucket and the AWS_* variables, or choose another --out.\n"
    )
    if case != "read-only":
        assert main(["check", uri]) == 2
        assert capsys.readouterr().err.startswith(f"warmstart: error: Cannot read results at {uri}: {cause}")


def test_a_profile_on_the_driver_reaches_the_workers_on_other_nodes(cluster, s3, monkeypatch, tmp_path):
    """Keys named by AWS_PROFILE only (no AWS_* keys on the driver), a server that checks them
    (moto's IAM), nodes whose own keys are wrong: a task on a worker node writes with the
    filesystem the driver resolved.  (moto's IAM check refuses the AWS C++ SDK's signed
    ListObjectsV2, so a whole `warmstart run` cannot run against it: the write is the proof.)"""
    import boto3
    import moto.settings

    iam = boto3.client("iam", endpoint_url=s3.endpoint, **_boto_keys(s3))
    name = f"writer{time.monotonic_ns()}"
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName="rw", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    (tmp_path / "credentials").write_text(
        f"[ws]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    env = {k: v for k, v in _driver_env(s3).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_PROFILE="ws", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), ADDRESS=cluster.address)
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    code = textwrap.dedent("""
        import os, ray
        from engine.storage.object_store import object_store
        from engine.trial.distributed import init_ray

        fs = object_store("s3://warmstart/profile")  # what every trial of a suite or run is handed

        @ray.remote(num_cpus=1)
        def write(fs):
            with fs.open_output_stream("warmstart/profile/from-a-node") as f:
                f.write(os.environ["AWS_ACCESS_KEY_ID"].encode())  # the node's own key, for the record
            return ray.get_runtime_context().get_node_id()

        init_ray(os.environ["ADDRESS"])  # the cluster's token and loopback address, as every driver joins
        print(ray.get(write.remote(fs)))
    """)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] in {node.node_id for node in cluster.workers}
    reader = boto3.session.Session().client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"], region_name="us-east-1",
    )  # fmt: skip
    written = reader.get_object(Bucket="warmstart", Key="profile/from-a-node")["Body"].read()
    assert written.decode() == WRONG_ENV["AWS_ACCESS_KEY_ID"]  # the node had other keys, and they were not used
