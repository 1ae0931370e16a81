"""``warmstart live labelstudio push|pull`` against a real Label Studio server (no mock):
the ``label-studio`` package in its own virtual environment (tests/live/labelstudio_server.py,
cached in ~/.cache/warmstart), SQLite in a temporary folder, a free local port.  An
annotator's script labels the pushed tasks through Label Studio's REST API, as the labelling
page does; ``pull`` must write exactly what was annotated, once."""

from __future__ import annotations

import base64
import io
import json
import os

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from engine.live import labelstudio
from tests.cli_support import cli, one_line
from tests.live.labelstudio_server import BuildFailed, build_venv, free_port, start

pytestmark = [
    pytest.mark.slow,
    # label-studio-sdk's own pydantic v1-style validators, nothing of warmstart's
    pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning:label_studio_sdk"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        venv = build_venv()
    except BuildFailed as exc:
        pytest.fail(f"could not install label-studio: {exc}")
    running = start(venv, tmp_path_factory.mktemp("label-studio"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def personal_token(server):
    """A personal access token (a JWT refresh token, what recent Label Studio hands out),
    made through the API with the legacy token: the adapter is tested with it."""
    answer = httpx.post(f"{server.url}/api/token/", headers={"Authorization": f"Token {server.token}"}, timeout=30)
    answer.raise_for_status()
    return answer.json()["token"]


class Annotator:
    """A person at the labelling page, as the REST calls it makes."""

    def __init__(self, server):
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {server.token}"}, timeout=30)

    def project(self, title: str) -> int:
        return next(p["id"] for p in self.http.get("/api/projects/").json()["results"] if p["title"] == title)

    def tasks(self, project: int) -> dict:
        """The project's tasks by the id warmstart gave them."""
        tasks = self.http.get("/api/tasks/", params={"project": project, "page_size": 1000}).json()["tasks"]
        return {t["data"]["ws_id"]: self.http.get(f"/api/tasks/{t['id']}/").json() for t in tasks}

    def label(self, task: dict, choice: str) -> None:
        region = {"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [choice]}}
        self.http.post(f"/api/tasks/{task['id']}/annotations/", json={"result": [region]}).raise_for_status()

    def skip(self, task: dict) -> None:
        answer = self.http.post(f"/api/tasks/{task['id']}/annotations/", json={"result": [], "was_cancelled": True})
        answer.raise_for_status()


@pytest.fixture
def digits_project(tmp_path):
    """A live folder as `live step` leaves it: the pool (ids 1000+i, 8x8 digits as one array
    column), the evaluation set (classes 0-9) and round 1's query."""
    digits = load_digits()
    pool = pd.DataFrame({"id": np.arange(1000, 1300), "pixels": list(digits.data[:300])})
    pool.to_parquet(tmp_path / "pool.parquet")
    pd.DataFrame({"pixels": list(digits.data[300:400]), "label": digits.target[300:400]}).to_parquet(
        tmp_path / "eval.parquet"
    )
    folder = tmp_path / "digits-live"  # its default project title: warmstart digits-live
    (folder / "queries").mkdir(parents=True)
    query = pd.DataFrame({"id": [1007, 1003, 1042, 1011, 1100, 1005], "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    query.to_parquet(folder / "queries" / "round-0001.parquet")
    truth = dict(zip(pool["id"].tolist(), digits.target[:300].tolist(), strict=True))
    return folder, truth


def labels_in(folder) -> dict[str, pd.DataFrame]:
    path = folder / "labels"
    return {p: pd.read_parquet(path / p) for p in sorted(os.listdir(path))} if path.is_dir() else {}


def test_push_annotate_pull(server, personal_token, digits_project, capsys, monkeypatch):
    folder, truth = digits_project
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", personal_token)
    pool, evals = str(folder.parent / "pool.parquet"), str(folder.parent / "eval.parquet")
    push = ("live", "labelstudio", "push", str(folder), "--url", server.url, "--pool", pool, "--eval", evals)
    code, out, err = cli(capsys, *push)
    assert (code, err) == (0, "")
    assert out.startswith("pushed round 1 to Label Studio project 'warmstart digits-live': 6 new task(s);")

    annotator = Annotator(server)
    project = annotator.project("warmstart digits-live")
    tasks = annotator.tasks(project)
    assert sorted(tasks) == [1003, 1005, 1007, 1011, 1042, 1100]
    first = tasks[1007]
    assert (first["data"]["round"], first["data"]["rank"], first["data"]["score"]) == (1, 1, 0.9)
    assert [(p["model_version"], p["score"]) for p in first["predictions"]] == [("round-0001", 0.9)]
    png = Image.open(io.BytesIO(base64.b64decode(first["data"]["image"].split(",", 1)[1])))
    assert (png.format, png.size) == ("PNG", (160, 160))  # 8x8, each pixel 20x20
    config = annotator.http.get(f"/api/projects/{project}/").json()["parsed_label_config"]["label"]
    assert config["labels"] == [str(c) for c in range(10)]

    # the same push again: no task twice
    assert cli(capsys, *push)[1].startswith("pushed round 1 to Label Studio project 'warmstart digits-live': 0 new")
    assert len(annotator.tasks(project)) == 6

    # the annotator labels four (one of them wrongly: a person may), skips one, leaves one
    given = {1007: truth[1007], 1003: truth[1003], 1042: (truth[1042] + 1) % 10, 1100: truth[1100]}
    for item, label in given.items():
        annotator.label(tasks[item], str(label))
    annotator.skip(tasks[1011])

    pull = ("live", "labelstudio", "pull", str(folder), "--url", server.url)
    code, out, err = cli(capsys, *pull)
    assert (code, err) == (0, "")
    files = labels_in(folder)
    assert len(files) == 1
    ((name, frame),) = files.items()
    assert name.startswith("labelstudio-") and name.endswith(".parquet")
    assert out.strip() == (
        f"pulled 4 label(s) from Label Studio project 'warmstart digits-live' into {folder / 'labels' / name} "
        "(1 task(s) skipped; 1 task(s) still unlabelled)"
    )
    assert list(frame.columns) == ["id", "label"]
    assert (frame["id"].dtype, frame["label"].dtype) == (np.int64, np.int64)
    assert dict(zip(frame["id"], frame["label"], strict=True)) == given

    # nothing new: nothing written
    code, out, _ = cli(capsys, *pull)
    assert code == 0 and out.startswith("no new annotations in Label Studio project 'warmstart digits-live'; nothing")
    assert list(labels_in(folder)) == [name]

    # the skipped one labelled after all, and a second annotation of an id already pulled
    annotator.label(tasks[1011], str(truth[1011]))
    annotator.label(tasks[1007], "0")
    code, out, _ = cli(capsys, *pull)
    assert code == 0 and "(1 annotation(s) of ids already labelled left out; 1 task(s) still unlabelled)" in out
    second = {p: f for p, f in labels_in(folder).items() if p != name}
    assert [f.to_dict("list") for f in second.values()] == [{"id": [1011], "label": [truth[1011]]}]
    assert "nothing written" in cli(capsys, *pull)[1]

    # round 2 asks for one id of round 1 still unlabelled, and two new ones
    pd.DataFrame({"id": [1200, 1005, 1201], "score": [0.95, 0.85, 0.75]}).to_parquet(
        folder / "queries" / "round-0002.parquet"
    )
    code, out, _ = cli(capsys, *push[:-2])  # the project exists: its classes need no --eval
    assert code == 0 and ": 2 new task(s), 1 already there given this round's score;" in out
    tasks = annotator.tasks(project)
    assert sorted(tasks) == [1003, 1005, 1007, 1011, 1042, 1100, 1200, 1201]
    assert [(p["model_version"], p["score"]) for p in tasks[1005]["predictions"]] == [
        ("round-0001", 0.4),
        ("round-0002", 0.85),
    ]
    assert tasks[1200]["data"]["rank"] == 1 and tasks[1201]["data"]["round"] == 2
    assert annotator.http.get(f"/api/projects/{project}/").json()["model_version"] == "round-0002"


def test_a_project_as_live_init_made_it_tabular_with_string_ids_and_classes(server, tmp_path, capsys, monkeypatch):
    """The pool, classes and features that `live init` recorded under DIR/_live/ (no --pool,
    no --eval); round 1's random picks have no score, so no prediction; a table of features
    instead of an image; ids and classes stay strings.  The legacy token works too."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    folder = tmp_path / "clinic"
    (folder / "_live").mkdir(parents=True)
    (folder / "queries").mkdir()
    rng = np.random.default_rng(0)
    pool = pd.DataFrame(rng.normal(size=(20, 3)), columns=["height", "weight", "age"])
    pool.insert(0, "id", [f"patient-{i}" for i in range(20)])
    pool.to_parquet(folder / "_live" / "pool.parquet")
    record = {"features": ["height", "weight", "age"], "classes": ["sick", "well"], "shape": None}
    (folder / "_live" / "project.json").write_text(json.dumps(record))
    query = pd.DataFrame({"id": ["patient-4", "patient-9"], "rank": [1, 2], "score": [np.nan, np.nan]})
    query.to_parquet(folder / "queries" / "round-0001.parquet")
    push = ("live", "labelstudio", "push", str(folder), "--url", server.url, "--project", "Clinic triage")
    code, out, _ = cli(capsys, *push)
    assert code == 0 and out.startswith("pushed round 1 to Label Studio project 'Clinic triage': 2 new task(s)")
    annotator = Annotator(server)
    project = annotator.project("Clinic triage")
    config = annotator.http.get(f"/api/projects/{project}/").json()["parsed_label_config"]["label"]
    assert (config["labels"], config["inputs"][0]["type"]) == (["sick", "well"], "Table")
    tasks = annotator.tasks(project)
    row = pool.set_index("id").loc["patient-4"]
    assert tasks["patient-4"]["data"]["features"] == {k: f"{v:.4g}" for k, v in row.items()}
    assert tasks["patient-4"]["data"]["heading"] == "id patient-4: round 1, rank 1"
    assert tasks["patient-4"]["predictions"] == [] and tasks["patient-9"]["data"]["score"] is None
    annotator.label(tasks["patient-9"], "well")
    code, out, _ = cli(capsys, "live", "labelstudio", "pull", *push[3:])
    assert code == 0 and "pulled 1 label(s)" in out
    (frame,) = labels_in(folder).values()
    assert frame.to_dict("list") == {"id": ["patient-9"], "label": ["well"]}


def test_a_pull_that_stopped_midway_is_redone_or_finished(server, personal_token, digits_project, capsys, monkeypatch):
    folder, truth = digits_project
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", personal_token)
    url, title = server.url, "Digits crash test"
    labelstudio.push(
        str(folder), url, title, pool=str(folder.parent / "pool.parquet"), eval=str(folder.parent / "eval.parquet")
    )
    annotator = Annotator(server)
    tasks = annotator.tasks(annotator.project(title))
    annotator.label(tasks[1003], str(truth[1003]))

    def crash(*args):
        raise KeyboardInterrupt

    # stopped before the label file's rename: nothing in labels/, the next pull writes it
    with monkeypatch.context() as m:
        m.setattr(labelstudio, "_publish", crash)
        with pytest.raises(KeyboardInterrupt):
            labelstudio.pull(str(folder), url, title)
    assert labels_in(folder) == {}
    first = labelstudio.pull(str(folder), url, title)
    assert list(labels_in(folder)) == [os.path.basename(first.path)]

    # stopped after the rename, before the state said so: the next pull writes nothing again
    annotator.label(tasks[1042], str(truth[1042]))
    real = labelstudio._recover
    with monkeypatch.context() as m:
        m.setattr(labelstudio, "_recover", lambda folder, state: crash() if "pending" in state else real(folder, state))
        with pytest.raises(KeyboardInterrupt):
            labelstudio.pull(str(folder), url, title)
    assert len(labels_in(folder)) == 2
    assert labelstudio.pull(str(folder), url, title).path is None
    frames = pd.concat(labels_in(folder).values())
    assert sorted(zip(frames["id"], frames["label"], strict=True)) == [(1003, truth[1003]), (1042, truth[1042])]
    state = json.loads(next((folder / "_labelstudio").glob("project-*.json")).read_text())
    assert "pending" not in state and sorted(state["ids"]) == [1003, 1042]
    assert os.listdir(folder / "_labelstudio" / "staging") == []


def test_errors_are_one_line_and_write_nothing(server, personal_token, digits_project, capsys, monkeypatch):
    folder, _ = digits_project
    pool = str(folder.parent / "pool.parquet")
    pull = ("live", "labelstudio", "pull", str(folder))
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    cases = [
        (("--url", server.url), None, "Set LABEL_STUDIO_API_KEY to your Label Studio API key"),
        (("--url", server.url), "not-a-key", "refused the API key in LABEL_STUDIO_API_KEY (401"),
        (("--url", f"http://127.0.0.1:{free_port()}"), personal_token, "does not answer (ConnectError"),
        (("--url", server.url, "--project", "No such project"), personal_token, "has no project 'No such project'"),
        (("--url", f"{server.url}/static"), personal_token, "is not a Label Studio server"),
    ]
    for args, key, message in cases:
        if key is not None:
            monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
        code, out, err = cli(capsys, *pull, *args)
        assert (code, out) == (2, ""), args
        assert message in one_line(err) and one_line(err).startswith("warmstart: error: "), err
    push = ("live", "labelstudio", "push", str(folder), "--url", server.url, "--project", "Errors", "--pool", pool)
    code, _, err = cli(capsys, *push)
    assert code == 2 and "evaluation set" in one_line(err)  # a new project needs the classes
    assert not (folder / "labels").exists()
