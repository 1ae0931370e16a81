"""A results folder's boundary, its locations and what resume trusts (docs/guarantees.md,
"Folders and locations"): on a local disk and on a real S3-compatible server (moto, one
module-scoped server; no Ray cluster).

- an --out inside another run's or suite's results, or holding them, is refused in one line
  naming the other folder (CLI exit 2, ConfigError in the API); readers take a folder's own
  rows only;
- malformed URIs are refused in one line before any use; trailing slashes and no prefix work;
- trial ids that readers would skip, or that the layout reserves, are refused at validation;
- a row that is not what its name says, a damaged status, damaged YAML metadata: recomputed
  and verified, or one line naming the object.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import textwrap

import pandas as pd
import pytest

import warmstart as ws
from engine.cli import main
from engine.errors import ConfigError
from engine.schema.records import columns_with
from engine.storage.check import check
from engine.storage.store import CONFIG_REMEDY, TrialStore, read_manifest, write_manifest
from tests.cli_support import cli, one_line, plain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETS = ["device=cpu", "rounds.max_rounds=3", "convergence.max_epochs=6"]
FAST = [arg for s in SETS for arg in ("--set", s)] + ["--quiet"]
TINY = {"device": "cpu", "rounds": {"max_rounds": 3}, "convergence": {"max_epochs": 6}}
TIMINGS = tuple(columns_with("timing"))  # times differ from run to run (started_at, ended_at too)


def table(out) -> list[dict]:
    """A folder's rows as comparable plain values, timings left out."""
    frame = ws.load(str(out)).sort_values("round")
    return [{k: plain(v) for k, v in r.items() if k not in TIMINGS} for r in frame.to_dict("records")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-round trial, the reference every recomputation must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["run", "--out", str(out), *FAST]) == 0
    (trial,) = os.listdir(out / "_warmstart")
    return out, trial, table(out)


def copy_to(finished, where):
    shutil.copytree(finished[0], where)
    return where


def suite_file(tmp_path, name: str = "boundary") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: {name}
        base: {json.dumps(TINY)}
        grid:
          seed: [0, 1]
        """)
    )
    return str(path)


# --- a results folder never contains another ----------------------------------------------------


def test_an_out_inside_another_results_folder_is_refused_naming_it(finished, tmp_path, capsys):
    outer = copy_to(finished, tmp_path / "outer")
    inner = outer / "inner"
    for argv in (["run", "--out", str(inner), *FAST], ["suite", suite_file(tmp_path), "--out", str(inner)]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == ""
        assert one_line(err) == (
            f"warmstart: error: The results folder {inner} would lie inside the results folder {outer}, whose readers "
            "(pandas.read_parquet reads folders recursively) would mix the two; choose an --out outside it."
        )
    with pytest.raises(ConfigError, match=f"inside the results folder {outer},"):
        ws.run_trial(TINY, str(inner / "deeper"))
    with pytest.raises(ConfigError, match=f"inside the results folder {outer},"):
        ws.Trial(TINY, out=str(inner))
    with pytest.raises(ConfigError, match=f"inside the results folder {outer},"):
        ws.run_suite(suite_file(tmp_path), str(inner))
    assert not inner.exists()  # nothing written


def test_a_symbolic_link_hides_no_results_folder_either_way(finished, tmp_path, capsys):
    results = copy_to(finished, tmp_path / "results")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (results / "link").symlink_to(elsewhere)  # a link out of a results folder: pandas follows it
    (tmp_path / "into").symlink_to(results)  # a link into one
    for out in (results / "link" / "x", tmp_path / "into" / "x"):
        code, _, err = cli(capsys, "run", "--out", str(out), *FAST)
        assert code == 2
        assert one_line(err) == (
            f"warmstart: error: The results folder {out} would lie inside the results folder {results}, whose "
            "readers (pandas.read_parquet reads folders recursively) would mix the two; choose an --out outside it."
        )
    assert os.listdir(elsewhere) == []


def test_an_out_that_holds_another_results_folder_is_refused_naming_it(finished, tmp_path, capsys):
    outer = tmp_path / "outer"
    inner = copy_to(finished, outer / "a" / "inner")
    (outer / "_report").mkdir()  # what no reader enters is not looked into
    for argv in (["run", "--out", str(outer), *FAST], ["suite", suite_file(tmp_path), "--out", str(outer)]):
        code, _, err = cli(capsys, *argv)
        assert code == 2
        assert one_line(err).startswith(
            f"warmstart: error: The results folder {outer} would hold the results folder {inner}, and readers"
        )
    for call in (lambda: ws.run_trial(TINY, str(outer)), lambda: ws.Trial(TINY, out=str(outer))):
        with pytest.raises(ConfigError, match=f"would hold the results folder {inner},"):
            call()
    assert sorted(os.listdir(outer)) == ["_report", "a"]  # nothing written


def test_the_walk_skips_what_no_reader_enters_and_is_bounded(finished, tmp_path, capsys):
    from engine.storage.folders import MAX_FOLDERS

    out = tmp_path / "out"
    copy_to(finished, out / "_private" / "inner")  # pyarrow and pandas skip '_' folders
    code, _, err = cli(capsys, "run", "--out", str(out), *FAST, "--set", "rounds.max_rounds=1")
    assert code == 0, err
    crowded = tmp_path / "crowded"
    for i in range(MAX_FOLDERS + 1):
        (crowded / f"d{i:03d}").mkdir(parents=True)
    code, _, err = cli(capsys, "run", "--out", str(crowded), *FAST)
    assert code == 2
    assert one_line(err) == (
        f"warmstart: error: The results folder {crowded} would hold more than {MAX_FOLDERS} folders that readers "
        "enter (pandas.read_parquet reads folders recursively); choose a new or empty folder for --out."
    )


def test_readers_take_a_folders_own_rows_only(finished, tmp_path, capsys):
    outer = copy_to(finished, tmp_path / "outer")
    nested = copy_to(finished, outer / "nested")  # as an older version let it happen
    for name in os.listdir(nested):  # another trial's rows, under another name
        if name.endswith(".parquet"):
            frame = pd.read_parquet(nested / name)
            frame["trial_id"] = "other"
            frame.to_parquet(nested / name.replace(finished[1], "other"))
            os.remove(nested / name)
    assert len(pd.read_parquet(outer)) == 6  # pandas reads folders recursively: why nesting is refused
    assert ws.load(str(outer))["trial_id"].unique().tolist() == [finished[1]]
    assert [t.trial_id for t in check(str(outer))] == [finished[1]]
    code, _, err = cli(capsys, "report", str(outer), "--out", str(tmp_path / "report"))
    assert code == 0, err
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| seeds |" in summary and "|     1 |      3 |" in summary  # one seed, not the nested trial's too


# --- locations: parsed once, before any use ------------------------------------------------------

MALFORMED = [
    ("s3://", "no bucket"),
    ("s3:///x", "no bucket"),
    ("s3://b//d", "an empty segment ('//') in the key"),
    ("s3://b/a/../api", "a '..' segment in the key"),
    ("s3://b/./api", "a '.' segment in the key"),
    ("s3a://b/x", "unknown scheme 's3a://'"),
    ("S3://b/x", "write the scheme in lower case (s3://b/x)"),
    ("s3://b/x?endpoint_override=y", "a query or fragment is not read"),
    ("file://elsewhere/x", "a file:// URI names an absolute path on this machine"),
    ("s3:/b/x", "'s3:' without '//' would be a local folder named 's3:'; write s3://b/x (or ./s3:/b/x"),
    ("s3a:b/x", "'s3a:' without '//' would be a local folder named 's3a:'; write s3://b/x (or ./s3a:b/x"),
    ("file:x", "'file:' without '//' would be a local folder named 'file:'; write file:///PATH"),
    ("s3://bkt:9000/x", "'bkt:9000' is not a bucket name: letters, digits, '.', '-' and '_' (the endpoint comes"),
    ("s3://user@bkt/x", "'user@bkt' is not a bucket name"),
    ("s3://bkt/x\n", "a control character (a newline, a tab) in the URI"),
    ("s3://bkt/p%20q", "'%' in the key: pyarrow's URIs, and so pandas.read_parquet, read '%XX' as an escape"),
    ("s3://bkt/a b", "' ' in the key: pyarrow's URIs"),
    ("s3://bkt/résumé", "'é' in the key: pyarrow's URIs"),
]


@pytest.mark.parametrize("uri, why", MALFORMED)
def test_a_malformed_uri_is_one_line_before_anything_starts(uri, why, capsys):
    for argv in (["run", "--out", uri, *FAST], ["check", uri], ["report", uri]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == ""
        line = one_line(err)
        assert line.startswith("warmstart: error: The ") and f" {uri!r} is not a results location: {why}" in line
    with pytest.raises(ConfigError, match="is not a results location"):
        ws.run_trial(TINY, uri)
    with pytest.raises(ConfigError, match="is not a results location"):
        ws.load(uri)


def test_a_file_uri_is_its_local_folder(tmp_path, capsys):
    out = tmp_path / "via-uri"
    code, _, err = cli(capsys, "run", "--out", f"file://{out}/", *FAST, "--set", "rounds.max_rounds=1")
    assert code == 0, err
    assert len(ws.load(str(out))) == 1 and len(ws.load(f"file://{out}")) == 1
    assert len(ws.load(f"file:{out}")) == 1  # file:/PATH, a file URI without an authority: the same folder


def test_a_store_scheme_without_its_slashes_writes_no_local_folder_and_relative_paths_work(
    tmp_path, monkeypatch, capsys
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for out in ("s3:/bucket/x", "gs:bucket", "file:rel"):
        code, _, err = cli(capsys, "run", "--out", out, *FAST, "--set", "rounds.max_rounds=1")
        assert code == 2 and "without '//' would be a local folder named" in one_line(err)
    assert os.listdir(cwd) == []  # no folder named 's3:', 'gs:' or 'file:' here
    code, _, err = cli(capsys, "run", "--out", "../rel/out", *FAST, "--set", "rounds.max_rounds=1")
    assert code == 0, err  # a relative path with '..' is a local folder as the user means it
    assert ws.load("../rel/out")["round"].tolist() == [1] and (tmp_path / "rel" / "out" / "_warmstart").is_dir()


# --- trial ids every reader reads -----------------------------------------------------------------


@pytest.mark.parametrize("trial_id", ["_hidden", ".hidden", "tune", "Ray", "suite.yaml", "search.json"])
def test_a_trial_id_readers_skip_or_the_layout_reserves_is_refused(trial_id, tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--out", str(tmp_path / "out"), "--set", f"trial_id={trial_id}", *FAST)
    assert code == 2
    line = one_line(err)
    assert line.startswith("warmstart: error: The 'trial_id' parameter must be null or a name of 1 to 120")
    assert "not starting with '.' or '_'" in line and f"Got {trial_id!r}." in line
    assert not (tmp_path / "out").exists()


def test_check_flags_a_trial_whose_id_readers_skip(finished, tmp_path):
    out = copy_to(finished, tmp_path / "out")
    trial = finished[1]
    os.rename(out / "_warmstart" / trial, out / "_warmstart" / "_hidden")  # as an older version wrote it
    for name in os.listdir(out):
        if name.endswith(".parquet"):
            os.rename(out / name, out / name.replace(trial, "_hidden"))
    (report,) = check(str(out))
    assert report.trial_id == "_hidden"
    assert report.problems[0].startswith("its id is not a valid trial id")


# --- resume trusts nothing it has not checked -----------------------------------------------------


def test_a_row_that_is_not_what_its_name_says_is_recomputed_and_verified(finished, tmp_path, capsys):
    out = copy_to(finished, tmp_path / "out")
    trial = finished[1]
    (out / f"{trial}-round0001.parquet").write_bytes((out / f"{trial}-round0003.parquet").read_bytes())
    (report,) = check(str(out))
    assert report.problems == [
        f"the row file of round 1 holds trial {trial!r} round 3",
        "no readable row for round(s) 1",
    ]
    with pytest.warns(UserWarning, match="1 row file.* hold another .trial, round. than their name says"):
        assert ws.load(str(out))["round"].tolist() == [2, 3]
    code, _, err = cli(capsys, "run", "--out", str(out), *FAST)
    assert code == 0, err
    assert f"the row file of round 1 of trial {trial} holds trial {trial!r} round 3: recomputed" in err
    assert "recomputed from round 1" in err and "already complete" not in err
    assert table(out) == finished[2]
    assert not check(str(out))[0].problems


def test_a_suite_trial_recomputed_from_round_1_runs_every_round_again(finished, tmp_path):
    from engine.schema.config import build
    from engine.suite.points import point_rounds

    out = copy_to(finished, tmp_path / "out")
    trial = finished[1]
    (out / f"{trial}-round0001.parquet").write_bytes((out / f"{trial}-round0002.parquet").read_bytes())
    # What a suite's Tune trial does (no Ray needed): its rows round by round, resumed.
    rounds = [[row["round"] for row in rows] for rows in point_rounds([build(TINY)], str(out))]
    assert rounds == [[1], [2], [3]]
    assert json.loads((out / "_warmstart" / trial / "status.json").read_text())["round"] == 3
    assert table(out) == finished[2]
    assert not check(str(out))[0].problems


@pytest.mark.parametrize("damage", ["truncated", "deleted", "behind", "far ahead", "not a number"])
def test_a_status_check_would_flag_is_recomputed_and_repaired(damage, finished, tmp_path, capsys):
    out = copy_to(finished, tmp_path / "out")
    status = out / "_warmstart" / finished[1] / "status.json"
    if damage == "truncated":
        status.write_bytes(status.read_bytes()[:10])
    elif damage == "deleted":
        status.unlink()
    elif damage == "behind":  # the process died between the last checkpoint and its status
        status.write_text(json.dumps({**json.loads(status.read_text()), "round": 2}))
    elif damage == "far ahead":  # valid JSON, but more than the one round a passed-over checkpoint explains
        status.write_text(json.dumps({**json.loads(status.read_text()), "round": 9}))
    else:  # valid JSON of the wrong type (true is an int to Python)
        status.write_text(json.dumps({**json.loads(status.read_text()), "round": True}))
    assert check(str(out))[0].problems
    code, _, err = cli(capsys, "run", "--out", str(out), *FAST)
    assert code == 0, err
    assert f"note: the status of trial {finished[1]} " in err and "recomputed from round 1" in err
    assert "already complete" not in err
    assert json.loads(status.read_text())["round"] == 3
    assert table(out) == finished[2]
    assert not check(str(out))[0].problems


@pytest.mark.parametrize(
    "content, why",
    [
        (b"dataset: [unclosed\n", "not YAML at line 2"),
        (b"just some text\n", "not a YAML mapping but str"),
        (b"seed: 3\n", "not a warmstart config: KeyError"),
        ("truncate", "truncated or altered: its checksum does not match"),
    ],
)
def test_a_damaged_saved_config_is_one_line_naming_it(content, why, finished, tmp_path, capsys):
    out = copy_to(finished, tmp_path / "out")
    saved = out / "_warmstart" / finished[1] / "config.yaml"
    saved.write_bytes(saved.read_bytes()[:-40] if content == "truncate" else content)
    code, _, err = cli(capsys, "run", "--out", str(out), *FAST)
    assert code == 2
    line = one_line(err)
    assert line.startswith(
        f"warmstart: error: The saved config {out}/_warmstart/{finished[1]}/config.yaml is damaged ("
    )
    assert why in line and "delete it: the next run writes it again" in line


def test_a_damaged_manifest_is_one_line_naming_it(tmp_path, capsys):
    from engine.suite.suite_file import load_suite
    from engine.suite.tune import prepare_out

    source, out = suite_file(tmp_path), tmp_path / "out"
    prepare_out(load_suite(source), str(out), resume=False)  # what a suite records before its first trial
    manifest = out / "_warmstart" / "suite.yaml"
    assert read_manifest(str(out))["name"] == "boundary"
    whole = manifest.read_bytes()
    for content, why in [
        (whole[: len(whole) // 2], "truncated or altered: its checksum does not match"),
        (b"name: [boundary\n", "not YAML at line 2"),
        (b"name: boundary\n", "it lacks the suite's name or trials"),
    ]:
        manifest.write_bytes(content)
        code, _, err = cli(capsys, "suite", source, "--out", str(out), "--resume")
        assert code == 2
        line = one_line(err)
        assert line.startswith(f"warmstart: error: The suite manifest {manifest} is damaged (") and why in line
    write_manifest(str(out), {"name": "boundary", "trials": []})
    assert read_manifest(str(out)) == {"name": "boundary", "trials": []}


# --- the same on an object store (a real S3-compatible server) -----------------------------------


@pytest.fixture(scope="module")
def s3():
    from benchmarks.local_cluster import s3_server

    with s3_server("folders") as server:
        yield server


def s3_store(uri: str, trial: str):
    """Read and write objects of a trial's folder as another tool would (pyarrow directly)."""
    store = TrialStore(uri, trial)

    def read(name: str) -> bytes:
        with store.fs.open_input_stream(f"{store.base}/{name}") as f:
            return f.read()

    def write(name: str, payload: bytes) -> None:
        with store.fs.open_output_stream(f"{store.base}/{name}") as f:
            f.write(payload)

    return read, write


def test_on_a_bucket_an_out_inside_or_holding_other_results_is_refused(aws, tmp_path, capsys):
    inner, outer = aws.uri("outer/inner"), aws.uri("outer")
    assert ws.run_trial({**TINY, "rounds": {"max_rounds": 2}}, inner)["round"].tolist() == [1, 2]
    for argv in (["run", "--out", outer, *FAST], ["suite", suite_file(tmp_path), "--out", outer + "/"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2
        assert one_line(err).startswith(
            f"warmstart: error: The results folder {outer} would hold the results folder {inner}, and readers"
        )
    with pytest.raises(ConfigError, match=f"would lie inside the results folder {inner},"):
        ws.Trial(TINY, out=inner + "/deeper")
    with pytest.raises(ConfigError, match=f"would lie inside the results folder {inner},"):
        ws.run_suite(suite_file(tmp_path), inner + "/deeper")


def test_on_a_bucket_a_dotted_key_is_refused_and_never_reads_zero_rows(aws):
    api = aws.uri("api")
    assert len(ws.run_trial({**TINY, "rounds": {"max_rounds": 2}}, api)) == 2
    for call in (
        lambda: ws.run_trial(TINY, aws.uri("a/../api")),
        lambda: ws.Trial(TINY, out=aws.uri("a/../api")),
        lambda: ws.load(aws.uri("a/../api")),
    ):
        with pytest.raises(ConfigError, match=r"a '\.\.' segment in the key.*; write s3://folders/api\.$"):
            call()
    assert ws.load(api + "/")["round"].tolist() == [1, 2]  # a trailing slash is the same folder


def test_a_bucket_without_prefix_is_a_results_folder_like_any_other(aws, capsys):
    import pyarrow.fs as pafs

    host = aws.endpoint.split("://")[1]
    keys = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}
    pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True, **keys).create_dir("bare")
    code, _, err = cli(capsys, "run", "--out", "s3://bare/", *FAST, "--set", "rounds.max_rounds=1")
    assert code == 0, err
    assert ws.load("s3://bare")["round"].tolist() == [1]
    code, _, err = cli(capsys, "run", "--out", "s3://bare/x", *FAST)
    assert code == 2 and "would lie inside the results folder s3://bare," in one_line(err)


def test_on_a_bucket_a_planted_row_and_a_truncated_status_are_recomputed(aws, capsys):
    uri = aws.uri("planted")
    reference = ws.run_trial(TINY, uri)
    trial = reference["trial_id"][0]
    read, write = s3_store(uri, trial)
    write(f"{trial}-round0001.parquet", read(f"{trial}-round0003.parquet"))
    write(f"_warmstart/{trial}/status.json", read(f"_warmstart/{trial}/status.json")[:10])
    (report,) = check(uri)
    assert f"the row file of round 1 holds trial {trial!r} round 3" in report.problems
    code, _, err = cli(capsys, "run", "--out", uri, *FAST)
    assert code == 0, err
    assert "holds trial" in err and "recomputed from round 1" in err
    again = ws.load(uri)
    assert again["round"].tolist() == [1, 2, 3]
    assert again["test_acc"].tolist() == reference["test_acc"].tolist()
    assert json.loads(read(f"_warmstart/{trial}/status.json"))["round"] == 3
    assert not check(uri)[0].problems


def test_on_a_bucket_a_damaged_config_is_one_line_naming_its_uri(aws, capsys):
    uri = aws.uri("damaged")
    trial = ws.run_trial({**TINY, "rounds": {"max_rounds": 1}}, uri)["trial_id"][0]
    _, write = s3_store(uri, trial)
    write(f"_warmstart/{trial}/config.yaml", b"{not: yaml")
    code, _, err = cli(capsys, "run", "--out", uri, *FAST, "--set", "rounds.max_rounds=1")
    assert code == 2
    assert one_line(err).startswith(
        f"warmstart: error: The saved config {uri}/_warmstart/{trial}/config.yaml is damaged"
    )


def test_a_report_is_refused_inside_another_results_folder_under_a_name_readers_read(finished, tmp_path, capsys):
    results, other = copy_to(finished, tmp_path / "results"), copy_to(finished, tmp_path / "other")
    for report in (other / "figs", other):  # pandas.read_parquet(other) would read its PNGs as Parquet
        code, _, err = cli(capsys, "report", str(results), "--out", str(report))
        assert code == 2
        assert one_line(err) == (
            f"warmstart: error: The report directory {report} is inside the results {other} under a name that "
            f"pyarrow reads as results; use one starting with '_' (the default: {other}/_report)."
        )
    assert not (other / "figs").exists() and not (other / "index.html").exists()
    assert len(pd.read_parquet(other)) == 3


def test_on_a_bucket_a_report_into_other_results_is_refused_and_a_silent_store_named(
    finished, aws, monkeypatch, capsys
):
    from engine.storage import object_store

    other = aws.uri("reported-other")
    ws.run_trial({**TINY, "rounds": {"max_rounds": 1}}, other)
    code, _, err = cli(capsys, "report", str(finished[0]), "--out", other + "/figs")
    assert code == 2
    assert one_line(err) == (
        f"warmstart: error: The report directory {other}/figs is inside the results {other} under a name that "
        f"pyarrow reads as results; use one starting with '_' (the default: {other}/_report)."
    )
    assert len(ws.load(other)) == 1
    with socket.socket() as closed:  # a port where nothing listens
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("WARMSTART_S3_TIMEOUT", "0.5")
    monkeypatch.setattr(object_store, "_OBJECT_STORES", {})
    code, _, err = cli(capsys, "report", str(finished[0]), "--out", aws.uri("report"))
    assert code == 2
    assert one_line(err) == (
        f"warmstart: error: Cannot write the report to {aws.uri('report')}: the endpoint {endpoint} does not answer."
    )


def test_a_trial_not_of_a_suite_is_refused_in_its_folder_and_one_of_its_trials_runs(tmp_path, capsys):
    from engine.suite.suite_file import load_suite
    from engine.suite.tune import prepare_out

    out = tmp_path / "suite"
    prepare_out(load_suite(suite_file(tmp_path)), str(out), resume=False)  # what a suite records first
    code, _, err = cli(capsys, "run", "--out", str(out), *FAST, "--set", "seed=7")
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"warmstart: error: {out} holds suite 'boundary', and trial 'digits-") and (
        "-s7-" in line and "is not one of its trials (its summary and report would count it" in line
    )
    with pytest.raises(ConfigError, match="is not one of its trials"):
        ws.Trial({**TINY, "seed": 7}, out=str(out))
    code, _, err = cli(capsys, "run", "--out", str(out), *FAST, "--set", "seed=1", "--set", "rounds.max_rounds=3")
    assert code == 0, err  # one of the suite's own trials, run by hand
    assert ws.load(str(out))["trial_id"].unique().tolist() == read_manifest(str(out))["trials"][1:]


def test_a_pathlib_path_is_a_local_folder_in_the_api(finished, tmp_path):
    out = tmp_path / "as-path"  # a pathlib.Path, not a str
    assert ws.run_trial({**TINY, "rounds": {"max_rounds": 1}}, out)["round"].tolist() == [1]
    assert ws.load(out)["round"].tolist() == [1]
    assert len(ws.load(finished[0])) == 3 and [t.trial_id for t in check(finished[0])] == [finished[1]]
    with pytest.raises(ConfigError, match=r"must be a folder or a URI \(a string\). Got b'/tmp'"):
        ws.load(b"/tmp")


def test_check_flags_a_saved_config_that_a_resume_refuses(finished, tmp_path, capsys):
    out = copy_to(finished, tmp_path / "out")
    saved = out / "_warmstart" / finished[1] / "config.yaml"
    whole = saved.read_bytes()
    saved.write_bytes(whole[:-40])  # truncated: its checksum does not match
    (report,) = check(str(out))
    assert report.problems == [
        f"The saved config {saved} is damaged (truncated or altered: its checksum does not match); {CONFIG_REMEDY}."
    ]
    other = copy_to(finished, tmp_path / "other")  # another trial's config, sealed and whole
    ws.run_trial({**TINY, "seed": 5, "rounds": {"max_rounds": 1}}, str(tmp_path / "seed5"))
    (seed5,) = os.listdir(tmp_path / "seed5" / "_warmstart")
    shutil.copy(tmp_path / "seed5" / "_warmstart" / seed5 / "config.yaml", other / "_warmstart" / finished[1])
    (report,) = check(str(other))
    assert report.problems == [f"its config.yaml is the config of trial {seed5!r}: a resume refuses it"]
    code, printed, err = cli(capsys, "check", str(other))
    assert code == 1 and f"its config.yaml is the config of trial {seed5!r}" in printed + err
