"""Live projects (docs/live.md): rounds fed by label files, checked against the simulated trial.

The data: scikit-learn's digits written as the `files` dataset's Parquet (64 pixel columns),
a 300-sample pool with string ids and a 200-sample evaluation set; a small MLP, 3 rounds."""

from __future__ import annotations

import glob
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import warmstart as ws
from tests.cli_support import cli, one_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_POOL, N_EVAL = 300, 200
COLUMNS = [f"p{i}" for i in range(64)]
CONFIG = {
    "model": {"name": "mlp", "width": 16},
    "optimizer": {"lr": 0.01},
    "init": {"name": "warm"},
    "acquisition": {"name": "margin"},
    "rounds": {"initial": 20, "per_round": 15, "max_rounds": 3},
    "convergence": {"max_epochs": 8},
    "device": "cpu",
}
SETS = ["dataset.shape=[1, 8, 8]"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train.parquet (pixels, label) for `warmstart run`; pool.parquet (id, pixels) and
    eval.parquet (pixels, label) for a live project; the pool's ground truth by id."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images.reshape(-1, 64).astype(np.float32), digits.target
    folder = tmp_path_factory.mktemp("live-data")
    ids = [f"img{i:03d}" for i in range(N_POOL)]
    pixels = pd.DataFrame(x[:N_POOL], columns=COLUMNS)
    pixels.assign(label=y[:N_POOL]).to_parquet(folder / "train.parquet")
    pd.DataFrame({"id": ids}).join(pixels).to_parquet(folder / "pool.parquet")
    evaluation = pd.DataFrame(x[N_POOL : N_POOL + N_EVAL], columns=COLUMNS).assign(label=y[N_POOL : N_POOL + N_EVAL])
    evaluation.to_parquet(folder / "eval.parquet")
    return folder, dict(zip(ids, y[:N_POOL].tolist(), strict=True))


@pytest.fixture(scope="module")
def fresh_project(files, tmp_path_factory):
    """A project just made by `live init` (copied by `project`)."""
    folder, _ = files
    out = tmp_path_factory.mktemp("live-template") / "project"
    ws.Live.init(folder / "pool.parquet", folder / "eval.parquet", str(out), CONFIG, sets=SETS)
    return out


@pytest.fixture
def project(fresh_project, tmp_path):
    out = tmp_path / "project"
    shutil.copytree(fresh_project, out)
    return out


def label_query(out, truth: dict, name: str | None = None) -> str:
    """Label the current query with the ground truth, as an annotator would: a CSV in labels/."""
    query = ws.Live(str(out)).query()
    path = os.path.join(out, "labels", name or f"answers-{len(os.listdir(os.path.join(out, 'labels'))):02d}.csv")
    query.assign(label=[truth[i] for i in query["id"]])[["id", "label"]].to_csv(path, index=False)
    return path


def rows_in(out) -> list[str]:
    return sorted(glob.glob(os.path.join(out, "*.parquet")))


def test_labelling_the_queries_with_the_ground_truth_reproduces_warmstart_run(files, project, capsys):
    folder, truth = files
    here = os.getcwd()
    os.chdir(folder)
    try:
        simulated = ws.run_trial(
            {**CONFIG, "dataset": {"name": "files", "train": "train.parquet", "test": "eval.parquet", "eval": "test"}},
            sets=["dataset.labels=label", *SETS],
        )
    finally:
        os.chdir(here)
    for round_ in (1, 2, 3):
        query = pd.read_parquet(project / "queries" / f"round-{round_:04d}.parquet")
        picked = sorted(int(i[3:]) for i in query["id"])
        assert picked == list(simulated["acquired"][round_ - 1])  # the query is the simulated round's pick
        if round_ > 1:  # margin's own score, in rank order: the smallest gaps first
            assert query["rank"].tolist() == list(range(1, 16))
            assert query["score"].is_monotonic_decreasing and (query["score"] <= 0).all()
        else:
            assert query["score"].isna().all() and len(query) == 20
        label_query(project, truth)
        code, out, err = cli(capsys, "live", "step", str(project))
        assert code == 0, err
        assert f"round {round_}: 1 label file(s)" in out
    live = ws.Live(str(project)).rows()
    assert live["round"].tolist() == [1, 2, 3]
    assert live["n_labeled"].tolist() == simulated["n_labeled"].tolist() == [20, 35, 50]
    for a, b in zip(live["test_acc"], simulated["test_acc"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-6)
    assert [list(a) for a in live["acquired"]] == [list(b) for b in simulated["acquired"]]
    assert [len(f) for f in live["label_files"]] == [1, 1, 1]
    assert simulated["label_files"].isna().all()
    # The last round is rounds.max_rounds: no query after it, and a further step says so without training.
    assert not (project / "queries" / "round-0004.parquet").exists()
    code, out, _ = cli(capsys, "live", "step", str(project))
    assert code == 0 and "no new labels" in out and len(rows_in(project)) == 3


def test_the_exported_model_serves_what_round_r_evaluated(files, project, capsys):
    folder, truth = files
    label_query(project, truth)
    assert cli(capsys, "live", "step", str(project))[0] == 0
    live = ws.Live(str(project))
    served = live.model()
    assert served.meta["round"] == 1 and served.meta["classes"] == list(range(10))
    assert served.meta["features"] == COLUMNS and served.meta["input_shape"] == [1, 8, 8]
    evaluation = pd.read_parquet(folder / "eval.parquet")
    predicted = served.predict(evaluation)
    accuracy = float(np.mean(np.array(predicted) == evaluation["label"].to_numpy()))
    assert math.isclose(accuracy, live.rows()["test_acc"].iloc[0], abs_tol=1e-9)
    # The project is a results folder like any: `warmstart check` reads it; its round count is rounds.max_rounds.
    code, out, _ = cli(capsys, "check", str(project))
    assert code == 0 and out.splitlines()[0] == f"ok      {served.meta['trial_id']}: 1/3 rounds"


def test_the_api_queries_teaches_and_steps(files, tmp_path):
    folder, truth = files
    pool = pd.read_parquet(folder / "pool.parquet")
    evaluation = pd.read_parquet(folder / "eval.parquet")
    live = ws.Live.init(pool, evaluation, str(tmp_path / "api"), {**CONFIG, "acquisition": "entropy"}, sets=SETS)
    assert live.round == 0 and live.rows().empty
    query = live.query()
    assert list(query.columns) == ["id", "rank", "score"] and len(query) == 20
    path = live.teach(query.assign(label=[truth[i] for i in query["id"]]))
    assert os.path.dirname(path) == str(tmp_path / "api" / "labels")
    rows = live.step()
    assert rows["round"].tolist() == [1] and live.round == 1
    assert rows["label_files"].iloc[0] == [f"labels/{os.path.basename(path)}#{_sha256(path)}"]
    second = live.query()
    assert len(second) == 15 and second["score"].is_monotonic_decreasing and (second["score"] >= 0).all()
    assert live.step().empty  # nothing new: no round
    assert live.rows()["round"].tolist() == [1]


def _sha256(path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_round_saved_without_its_checkpoint_is_redone_from_its_own_files(files, project, capsys):
    """A crash after the row, before the checkpoint: the next step redoes that round with
    the files its row names (the row must reproduce), then takes the new ones."""
    _, truth = files
    for _ in range(2):
        label_query(project, truth)
        assert cli(capsys, "live", "step", str(project))[0] == 0
    before = ws.Live(str(project)).rows()
    trial = ws.Live(str(project))._project.trial_id
    os.remove(project / "_warmstart" / trial / "checkpoint-0002.pt")
    label_query(project, truth)  # round 3's labels arrive meanwhile
    code, out, err = cli(capsys, "live", "step", str(project))
    assert code == 0, err
    assert "redid round 2: 1 label file(s)" in out and "round 3: 1 label file(s)" in out
    after = ws.Live(str(project)).rows()
    assert after["round"].tolist() == [1, 2, 3]
    assert after["test_acc"].tolist()[:2] == before["test_acc"].tolist()
    assert after["started_at"].tolist()[:2] == before["started_at"].tolist()  # the saved rows kept, not rewritten
    consumed = [entry for files in after["label_files"] for entry in files]
    assert len(consumed) == len(set(consumed)) == 3


def test_a_consumed_file_that_changes_is_refused_and_its_copy_still_serves(files, project, capsys):
    _, truth = files
    path = label_query(project, truth)
    assert cli(capsys, "live", "step", str(project))[0] == 0
    with open(path, "a") as f:
        f.write("img299,1\n")
    code, _, err = cli(capsys, "live", "step", str(project))
    assert code == 2 and f"{path} changed after a round consumed it" in one_line(err)
    os.remove(path)  # moved away: the copy under _live/consumed serves the next steps
    label_query(project, truth, "round2.csv")
    code, out, err = cli(capsys, "live", "step", str(project))
    assert code == 0 and "round 2" in out, err


# --- bad input: one line, exit 2, nothing trained, no row written, the file left in place and named ---


def _write(project, name: str, content) -> str:
    path = os.path.join(project, "labels", name)
    if isinstance(content, pd.DataFrame):
        content.to_parquet(path) if name.endswith(".parquet") else content.to_csv(path, index=False)
    else:
        with open(path, "wb") as f:
            f.write(content)
    return path


BAD_LABELS = {
    "an id not in the pool": ("a.csv", pd.DataFrame({"id": ["img001", "nope"], "label": [1, 2]}), "'nope' (row 2), which is not in the pool"),
    "a label outside the classes": ("a.parquet", pd.DataFrame({"id": ["img001"], "label": [10]}), "the label 10 (row 1), which is not one of the evaluation set's classes (0, 1, 2"),
    "an id labelled twice, differently": ("a.csv", pd.DataFrame({"id": ["img001", "img001"], "label": [1, 2]}), "labels the id 'img001' twice, as 1 and 2"),
    "not a table": ("a.txt", b"some notes", "is not a table: name it .parquet or .csv"),
    "a Parquet file that is not Parquet": ("a.parquet", b"PAR1 no", "is not a parquet table"),
    "no label column": ("a.csv", pd.DataFrame({"id": ["img001"], "class": [1]}), "has no 'label' column (it has 'id', 'class')"),
    "no id column": ("a.parquet", pd.DataFrame({"name": ["img001"], "label": [1]}), "has no 'id' column"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_a_bad_label_file_is_one_line_naming_it_and_nothing_trains(project, capsys, case):
    name, content, message = BAD_LABELS[case]
    path = _write(project, name, content)
    code, out, err = cli(capsys, "live", "step", str(project))
    line = one_line(err)
    assert code == 2 and line.startswith(f"warmstart: error: The label file {path} ") and message in line, line
    assert os.path.exists(path) and rows_in(project) == [] and not os.path.exists(project / "_warmstart")


def test_a_label_contradicting_an_earlier_round_names_both_files(files, project, capsys):
    _, truth = files
    first = label_query(project, truth)
    assert cli(capsys, "live", "step", str(project))[0] == 0
    some = pd.read_csv(first)["id"].iloc[0]
    path = _write(project, "fix.csv", pd.DataFrame({"id": [some], "label": [(truth[some] + 1) % 10]}))
    code, _, err = cli(capsys, "live", "step", str(project))
    line = one_line(err)
    assert code == 2 and f"{path} labels the id {some!r} as {(truth[some] + 1) % 10!r}, but {first} labelled it" in line
    assert len(rows_in(project)) == 1 and os.path.exists(path)


def test_a_step_before_any_label_says_what_to_label(project, capsys):
    code, _, err = cli(capsys, "live", "step", str(project))
    assert code == 2 and "No labels yet" in one_line(err) and "queries/round-0001.parquet" in err
    assert not os.path.exists(project / "_warmstart")


def test_a_pool_whose_features_differ_and_an_empty_pool_are_refused_at_init(files, tmp_path, capsys):
    folder, _ = files
    pool = pd.read_parquet(folder / "pool.parquet")
    pool.rename(columns={"p3": "q3"}).to_parquet(tmp_path / "other.parquet")
    pool.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    evaluation = str(folder / "eval.parquet")
    for pool_file, message in (
        ("other.parquet", f"The pool's features differ from the evaluation set's: {tmp_path}/other.parquet has 'q3' and {evaluation} not; {evaluation} has 'p3'"),
        ("empty.parquet", f"The pool {tmp_path}/empty.parquet is empty"),
    ):  # fmt: skip
        out = tmp_path / f"from-{pool_file}"
        code, _, err = cli(
            capsys, "live", "init", "--pool", str(tmp_path / pool_file), "--eval", evaluation, "--out", str(out)
        )
        assert code == 2 and message in one_line(err), err
        assert not out.exists()


# --- online mode and watch ----------------------------------------------------------------


def test_each_batch_is_a_round_that_grows_the_pool_and_asks_nothing(files, tmp_path, capsys):
    from sklearn.datasets import load_digits

    folder, truth = files
    out = tmp_path / "online"
    config = {**CONFIG, "rounds": {"initial": 20, "per_round": 15, "max_rounds": None}}
    ws.Live.init(folder / "pool.parquet", folder / "eval.parquet", str(out), config, sets=SETS)
    label_query(out, truth)
    assert cli(capsys, "live", "step", str(out))[0] == 0
    digits = load_digits()
    x, y = digits.images.reshape(-1, 64), digits.target
    for name, lo in (("day1.csv", 600), ("day2.parquet", 625)):
        batch = pd.DataFrame(x[lo : lo + 25], columns=COLUMNS).assign(id=[f"new{i}" for i in range(lo, lo + 25)])
        batch = batch.assign(label=y[lo : lo + 25])
        if name.endswith(".csv"):
            batch.to_csv(out / "batches" / name, index=False)
        else:
            batch.to_parquet(out / "batches" / name)
    code, printed, err = cli(capsys, "live", "step", str(out))
    assert code == 0, err
    assert "round 2: 1 batch file" in printed and "round 3: 1 batch file" in printed
    rows = ws.Live(str(out)).rows()
    assert rows["n_labeled"].tolist() == [20, 45, 70] and rows["n_pool"].tolist() == [300, 325, 350]
    assert list(rows["acquired"][1]) == list(range(300, 325)) and list(rows["acquired"][2]) == list(range(325, 350))
    assert [f[0].split("#")[0] for f in rows["label_files"]][1:] == ["batches/day1.csv", "batches/day2.parquet"]
    assert not (out / "queries" / "round-0004.parquet").exists() and ws.Live(str(out)).query().empty
    assert ws.Live(str(out)).model().meta["round"] == 3
    # A batch may not bring an id the project has: refused, nothing trained.
    pd.DataFrame(x[:1], columns=COLUMNS).assign(id=["img005"], label=[1]).to_parquet(out / "batches" / "day3.parquet")
    code, _, err = cli(capsys, "live", "step", str(out))
    assert code == 2 and "brings the id 'img005' (row 1), which is taken" in one_line(err)
    assert len(rows_in(out)) == 3


def test_watch_steps_as_files_arrive_and_waits_out_a_bad_one(files, project):
    from engine.live.step import watch

    _, truth = files
    said, errors = [], []
    arrivals = [
        lambda: _write(project, "bad.csv", pd.DataFrame({"id": ["nope"], "label": [1]})),
        lambda: os.remove(project / "labels" / "bad.csv") or label_query(project, truth),
    ]

    def sleep(seconds):
        assert seconds == 2
        if not arrivals:
            raise KeyboardInterrupt
        arrivals.pop(0)()

    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        watch(str(project), every=2, say=said.append, sleep=sleep)
    errors = stderr.getvalue().splitlines()
    assert len(errors) == 1 and "'nope' (row 1), which is not in the pool" in errors[0]
    assert any(line.startswith("round 1: 1 label file(s)") for line in said) and said[-1] == "stopped watching"
    assert len(rows_in(project)) == 1


def test_integer_ids_and_named_classes(files, tmp_path, capsys):
    """Ids may be integers (a CSV's text "17" is the id 17) and classes strings (the served
    model answers with them)."""
    folder, truth = files
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    pool = pd.read_parquet(folder / "pool.parquet").assign(id=lambda f: [int(i[3:]) * 10 for i in f["id"]])
    evaluation = pd.read_parquet(folder / "eval.parquet").assign(label=lambda f: [names[v] for v in f["label"]])
    live = ws.Live.init(pool, evaluation, str(tmp_path / "named"), CONFIG, sets=SETS)
    query = live.query()
    assert query["id"].dtype.kind == "i" and (query["id"] % 10 == 0).all()
    answers = query.assign(label=[names[truth[f"img{i // 10:03d}"]] for i in query["id"]])[["id", "label"]]
    answers.to_csv(tmp_path / "named" / "labels" / "answers.csv", index=False)
    code, _, err = cli(capsys, "live", "step", str(tmp_path / "named"))
    assert code == 0, err
    served = live.model()
    assert served.meta["classes"] == sorted(names)
    predicted = served.predict(evaluation)
    accuracy = float(np.mean(np.array(predicted) == evaluation["label"].to_numpy()))
    assert math.isclose(accuracy, live.rows()["test_acc"].iloc[0], abs_tol=1e-9)
    assert (
        list(live.rows()["acquired_classes"].iloc[0])
        == np.bincount([sorted(names).index(v) for v in answers["label"]], minlength=10).tolist()
    )


# --- on an object store (a real S3-compatible server) --------------------------------------


@pytest.fixture(scope="module")
def s3():
    from benchmarks.local_cluster import s3_server

    with s3_server("live") as server:
        yield server


def test_a_project_on_an_object_store(files, aws, capsys):
    folder, truth = files
    uri = f"s3://{aws.bucket}/team/project"
    live = ws.Live.init(folder / "pool.parquet", folder / "eval.parquet", uri, CONFIG, sets=SETS)
    for round_ in (1, 2):
        query = live.query()
        assert len(query) == (20 if round_ == 1 else 15)
        live.teach(query.assign(label=[truth[i] for i in query["id"]]), name=f"answers-{round_}.csv.parquet")
        code, out, err = cli(capsys, "live", "step", uri)
        assert code == 0 and f"round {round_}: 1 label file(s)" in out, err
    rows = ws.load(uri)
    assert rows["round"].tolist() == [1, 2] and rows["n_labeled"].tolist() == [20, 35]
    assert [f[0].split("#")[0] for f in rows["label_files"]] == [
        "labels/answers-1.csv.parquet",
        "labels/answers-2.csv.parquet",
    ]
    assert live.model().meta["round"] == 2 and len(live.query()) == 15
    live.teach(pd.DataFrame({"id": ["nope"], "label": [3]}), name="bad.parquet")
    code, _, err = cli(capsys, "live", "step", uri)
    assert code == 2 and f"The label file {uri}/labels/bad.parquet labels the id 'nope'" in one_line(err)
    assert ws.Live(uri).rows()["round"].tolist() == [1, 2]


def test_the_dataset_section_is_the_projects_own(files, tmp_path, capsys):
    folder, _ = files
    init = ["live", "init", "--pool", str(folder / "pool.parquet"), "--eval", str(folder / "eval.parquet")]
    for setting, message in (
        ("dataset=digits", "A live project's data is its pool and evaluation set, not the dataset 'digits'"),
        ("dataset.train=mine.parquet", "The 'dataset.train' key is the live project's own"),
    ):
        code, _, err = cli(capsys, *init, "--out", str(tmp_path / "p"), "--set", setting)
        assert code == 2 and message in one_line(err) and not (tmp_path / "p").exists()


def test_the_cli_refuses_a_folder_that_is_no_project_and_a_bad_every(project, tmp_path, capsys):
    code, _, err = cli(capsys, "live", "step", str(tmp_path / "nothing"))
    assert code == 2 and one_line(err) == (
        f"warmstart: error: {tmp_path}/nothing is not a live project (no _live/project.json); make one with "
        "`warmstart live init`."
    )
    for every, why in (("0.5", "--every must be at least 1 second, not 0.5."), ("soon", "--every is a number")):
        code, _, err = cli(capsys, "live", "watch", str(project), "--every", every)
        assert code == 2 and why in one_line(err)
    code, _, err = cli(capsys, "live", "init", "--pool", "p.parquet", "--eval", "e.parquet", "--out", str(project))
    assert (
        code == 2
        and one_line(err)
        == f"warmstart: error: {project} is already a live project: step it with `warmstart live step {project}`."
    )


# --- docs/live.md cannot rot: its walkthrough runs as written ----------------------------------


def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    import shlex
    from pathlib import Path

    from sklearn.datasets import load_digits

    page = (Path(__file__).resolve().parents[2] / "docs" / "live.md").read_text()
    walkthrough = page.split("## Walkthrough with plain files")[1].split("## The folder contract")[0]
    python = re.findall(r"```python\n(.*?)```", walkthrough, re.S)
    commands = [c.replace("\\\n", " ") for c in re.findall(r"```bash\n(.*?)```", walkthrough, re.S)]
    printed = re.search(r"```text\n(.*?)```", walkthrough, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(python[0], {})  # writes pool.parquet and eval.parquet
    init = shlex.split(commands[0])
    assert init[:3] == ["warmstart", "live", "init"]
    code, _, err = cli(capsys, *init[1:])
    assert code == 0, err
    truth = load_digits().target
    query = pd.read_parquet("project/queries/round-0001.parquet")
    exec(python[1], {"pd": pd, "my_labels": [truth[int(i[3:])] for i in query["id"]]})  # the team's labels
    assert shlex.split(commands[1]) == ["warmstart", "live", "step", "project"]
    code, out, err = cli(capsys, "live", "step", "project")
    assert code == 0, err
    # The lines as shown, numbers and paths aside.
    shown = re.sub(r"\d+\.\d+", "N", printed.replace("/home/me/project", str(tmp_path / "project")))
    assert re.sub(r"\d+\.\d+", "N", out) == shown
    served = ws.Live("project").model()
    frame = pd.read_parquet("eval.parquet")
    assert len(served.predict(frame)) == len(frame) and served.probabilities(frame).shape == (len(frame), 10)
