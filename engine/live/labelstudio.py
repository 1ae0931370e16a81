"""Label Studio as the annotator of a live project (docs/live.md, "With Label Studio").

``push`` turns a query, ``DIR/queries/round-NNNN.parquet`` (``id``, ``score``, rows in rank
order), into tasks of a Label Studio project: each task shows the item (a small PNG for an
image, a table of its features otherwise) and carries the acquisition score as a prediction
whose ``model_version`` is the round.  An id already in the project is not pushed again.

``pull`` turns the finished annotations into one label file, ``DIR/labels/labelstudio-<UTC
time>.parquet`` (``id``, ``label``), for ``warmstart live step``.  Each annotation is written
once: what was pulled is recorded in ``DIR/_labelstudio/project-<id>.json``, and the label
file's rename into ``DIR/labels/`` is the one step that commits a pull (a pull that crashed
before it wrote nothing; one that crashed after it is completed by the next pull).  Skipped
(cancelled) annotations and empty ones are not labels; an id gets one label, its first
annotation's.

The client is ``label-studio-sdk`` (the ``labelstudio`` extra); its key, a personal access
token or a legacy token, comes from ``LABEL_STUDIO_API_KEY``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from engine.errors import ConfigError
from engine.storage.store import put

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
CONTROL = "label"  # the Choices tag every annotation answers
ITEM = "item"  # the object tag that shows the item: an Image or a Table
VIEWS = ("auto", "image", "table")
QUERY = re.compile(r"round-(\d+)\.parquet")
TITLE_LENGTH = (3, 50)  # what Label Studio accepts as a project title
IMAGE_PIXELS = 160  # an image is scaled up (nearest neighbour) to about this many pixels a side
BATCH = 500  # tasks per import request
STATE = "_labelstudio"  # DIR/_labelstudio/: what was pulled (a name under _: no reader of the rows looks in it)
RECORD = os.path.join("_live", "project.json")  # what `live init` recorded: features, classes, shape


@dataclass(frozen=True)
class Pushed:
    project: str
    project_id: int
    round: int
    created: int  # new tasks
    rescored: int  # tasks already there that got this round's score as a prediction
    present: int  # tasks already there with this round's score (pushed before)
    url: str

    def summary(self) -> str:
        again = f", {self.rescored} already there given this round's score" if self.rescored else ""
        same = f", {self.present} already pushed" if self.present else ""
        return (
            f"pushed round {self.round} to Label Studio project {self.project!r}: {self.created} new task(s)"
            f"{again}{same}; label them at {self.url}"
        )


@dataclass(frozen=True)
class Pulled:
    project: str
    path: str | None  # the label file written; None when there was nothing new
    labels: int
    skipped: int  # tasks the annotators skipped (cancelled), none of them labelled
    repeated: int  # annotations of ids already labelled (not written again)
    waiting: int  # tasks nobody has labelled or skipped yet

    def summary(self) -> str:
        notes = [
            f"{n} {what}"
            for n, what in (
                (self.skipped, "task(s) skipped"),
                (self.repeated, "annotation(s) of ids already labelled left out"),
                (self.waiting, "task(s) still unlabelled"),
            )
            if n
        ]
        tail = f" ({'; '.join(notes)})" if notes else ""
        if self.path is None:
            return f"no new annotations in Label Studio project {self.project!r}; nothing written{tail}"
        return f"pulled {self.labels} label(s) from Label Studio project {self.project!r} into {self.path}{tail}"


# ---------------------------------------------------------------------------- the server


def connect(url: str, api_key: str | None = None):
    """A client of the Label Studio at ``url``, checked: the server answers and takes the key."""
    try:
        import httpx
        from label_studio_sdk import LabelStudio
        from label_studio_sdk.core.api_error import ApiError
    except ImportError:
        raise ConfigError(
            "warmstart live labelstudio needs label-studio-sdk: pip install 'warmstart[labelstudio]'."
        ) from None
    key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
    if not key.strip():
        raise ConfigError(
            f"Set {API_KEY_ENV} to your Label Studio API key (Label Studio: Account & Settings, "
            "Personal Access Token or legacy token)."
        )
    url = url.rstrip("/")
    if not re.match(r"https?://[^/]", url):
        raise ConfigError(f"--url must be the http(s) address of a Label Studio server, not {url!r}.")
    try:
        client = LabelStudio(base_url=url, api_key=key.strip(), timeout=30)
        client.users.whoami()
    except ApiError as exc:
        raise _api_error(exc, url) from None
    except (httpx.HTTPError, ValueError) as exc:  # no connection, a timeout, an answer that is not Label Studio's
        raise _transport_error(exc, url) from None
    return client


def _api_error(exc: Any, url: str) -> ConfigError:
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        detail = _detail(getattr(exc, "body", None))
        return ConfigError(
            f"Label Studio at {url} refused the API key in {API_KEY_ENV} ({status}{': ' + detail if detail else ''}); "
            "copy it from Account & Settings."
        )
    if status == 404:
        return ConfigError(f"{url} answers but is not a Label Studio server (404 on its API); check --url.")
    return ConfigError(f"Label Studio at {url} answered {status}: {_detail(getattr(exc, 'body', None)) or exc}.")


def _transport_error(exc: Exception, url: str) -> ConfigError:
    name = type(exc).__name__
    if "json" in name.lower() or isinstance(exc, ValueError):
        return ConfigError(
            f"{url} answers but is not a Label Studio server (its API did not answer JSON); check --url."
        )
    return ConfigError(f"Label Studio at {url} does not answer ({name}: {exc}); start it or fix --url.")


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or "")
    return "" if body is None else str(body)[:200]


def _call(url: str, what, *args, **kwargs):
    """One API call, its failures as one line for the user."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return what(*args, **kwargs)
    except ApiError as exc:
        raise _api_error(exc, url) from None
    except (httpx.HTTPError, ValueError) as exc:
        raise _transport_error(exc, url) from None


def default_title(folder: str) -> str:
    """The project title when ``--project`` is not given: ``warmstart <folder name>``."""
    name = os.path.basename(os.path.normpath(os.path.abspath(folder))) or "live"
    return f"warmstart {name}"[: TITLE_LENGTH[1]]


def _check_title(title: str) -> str:
    lo, hi = TITLE_LENGTH
    if not lo <= len(title.strip()) <= hi:
        raise ConfigError(f"--project must be {lo} to {hi} characters (Label Studio's limit), not {title!r}.")
    return title.strip()


def find_project(client, url: str, title: str):
    """The project titled ``title`` (the oldest, if several), or None."""
    found = [p for p in _call(url, lambda: list(client.projects.list(page_size=100))) if p.title == title]
    return min(found, key=lambda p: p.id) if found else None


def _titles(client, url: str) -> list[str]:
    return [p.title for p in _call(url, lambda: list(client.projects.list(page_size=100)))]


def label_config(classes: list, view: str) -> str:
    """A classification config: the item (``$image`` or ``$features``) and one choice per class."""
    shown = (
        '<Image name="item" value="$image" zoom="true" maxWidth="320px"/>'
        if view == "image"
        else '<Table name="item" value="$features"/>'
    )
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return (
        "<View>\n"
        '  <Header value="$heading"/>\n'
        f"  {shown}\n"
        f'  <Choices name="{CONTROL}" toName="{ITEM}" choice="single-radio" showInline="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>"
    )


def _project_shape(project) -> tuple[list[str], str]:
    """(the class names of a project's choices, its view), or a ConfigError for a project that is not ours."""
    parsed = project.parsed_label_config or {}
    control = parsed.get(CONTROL) or {}
    inputs = control.get("inputs") or [{}]
    value = inputs[0].get("value")
    if control.get("type") != "Choices" or value not in ("image", "features"):
        raise ConfigError(
            f"Label Studio project {project.title!r} was not made by warmstart (no '{CONTROL}' choices over "
            "$image or $features); name another with --project."
        )
    return [str(c) for c in control.get("labels") or []], "image" if value == "image" else "table"


# ---------------------------------------------------------------------------- the live folder


def _local(folder: str) -> str:
    if "://" in folder:
        raise ConfigError(f"warmstart live labelstudio works on a local folder, not {folder}.")
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder (a live project made by warmstart live init).")
    return folder


def latest_query(folder: str, round: int | None = None) -> tuple[int, str]:
    """(round, path) of ``DIR/queries/round-NNNN.parquet``: the given round or the latest."""
    queries = os.path.join(folder, "queries")
    found = {}
    if os.path.isdir(queries):
        for name in os.listdir(queries):
            if m := QUERY.fullmatch(name):
                found[int(m.group(1))] = os.path.join(queries, name)
    if not found:
        raise ConfigError(f"{queries} holds no query (round-NNNN.parquet) yet: run warmstart live step {folder} first.")
    if round is None:
        round = max(found)
    if round not in found:
        raise ConfigError(
            f"{queries} has no query for round {round} (it has rounds {', '.join(map(str, sorted(found)))})."
        )
    return round, found[round]


def read_query(path: str) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise ConfigError(f"{path} is not a Parquet table ({type(exc).__name__}).") from None
    missing = [c for c in ("id", "score") if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)} (a query has id and score).")
    return frame.reset_index(drop=True)


def recorded(folder: str) -> dict:
    """What ``live init`` recorded in ``DIR/_live/project.json`` (features, classes, shape), or {}."""
    path = os.path.join(folder, RECORD)
    return _read_json(path, f"{path} is damaged (not JSON).")


def _read_json(path: str, damaged: str) -> dict:
    """The JSON object in ``path``, {} where there is no file; ``damaged``: the ConfigError's
    message where it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError:
        raise ConfigError(damaged) from None


def _beside(folder: str, given: str | None, name: str) -> str | None:
    """``given``, else the project's own copy ``DIR/_live/<name>`` if there is one."""
    own = os.path.join(folder, "_live", name)
    return given if given is not None else own if os.path.exists(own) else None


def read_pool(path: str | None, folder: str, features: list | None = None) -> pd.DataFrame:
    """The pool's features, indexed by id: ``features`` (the project's), else every column but
    ``id`` (and ``label``, if present)."""
    if path is None:
        raise ConfigError(f"Name the pool of {folder} with --pool POOL.parquet (the file live init was given).")
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise ConfigError(f"--pool {path}: no such file.") from None
    except Exception as exc:
        raise ConfigError(f"--pool {path} is not a Parquet table ({type(exc).__name__}).") from None
    if "id" not in frame.columns:
        raise ConfigError(f"--pool {path} has no 'id' column.")
    if features:
        absent = [c for c in features if c not in frame.columns]
        if absent:
            raise ConfigError(f"--pool {path} lacks the project's feature column(s) {', '.join(map(str, absent[:5]))}.")
        features = frame[list(features)]
    else:
        features = frame.drop(columns=[c for c in ("id", "label") if c in frame.columns])
    if features.shape[1] == 0:
        raise ConfigError(f"--pool {path} has no feature column besides 'id'.")
    features.index = frame["id"].map(_plain)
    return features


def read_classes(path: str | None) -> list:
    """The classes of the evaluation set, sorted: the choices an annotator is offered."""
    if path is None:
        raise ConfigError("Name the evaluation set with --eval EVAL.parquet: its 'label' column gives the classes.")
    try:
        labels = pd.read_parquet(path, columns=["label"])["label"]
    except FileNotFoundError:
        raise ConfigError(f"--eval {path}: no such file.") from None
    except Exception as exc:
        raise ConfigError(f"--eval {path} has no readable 'label' column ({type(exc).__name__}).") from None
    return sorted({_plain(v) for v in labels.dropna()}, key=lambda v: (isinstance(v, str), v))


def _plain(value: Any) -> Any:
    """A numpy scalar as the JSON-able Python value (ids and classes travel as JSON)."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------- what a task shows


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in re.split(r"[x,]", text.strip().lower()))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1 or (len(shape) == 3 and shape[0] not in (1, 3)):
        raise ConfigError(f"--shape must be HxW or CxHxW with C 1 or 3 (e.g. 8x8, 3x32x32), not {text!r}.")
    return shape


def _vectors(features: pd.DataFrame) -> np.ndarray:
    """[N, F] floats: scalar columns side by side, or one column holding an array per row."""
    if features.shape[1] == 1 and features.iloc[:, 0].map(lambda v: hasattr(v, "__len__")).all():
        return np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in features.iloc[:, 0]])
    return features.to_numpy(dtype=np.float64)


def choose_view(features: pd.DataFrame, view: str, shape: tuple[int, ...] | None) -> tuple[str, tuple[int, ...] | None]:
    """Image or table, and the image's shape: ``--shape`` if given; else a square number of
    values (at least 8x8) is a greyscale image and three squares a colour one."""
    if view not in VIEWS:
        raise ConfigError(f"--view must be one of {', '.join(VIEWS)}, not {view!r}.")
    n = _vectors(features.iloc[:1]).shape[1]
    if shape is not None:
        if math.prod(shape) != n:
            raise ConfigError(f"--shape {'x'.join(map(str, shape))} does not fit the {n} values of each pool item.")
        return ("table", None) if view == "table" else ("image", shape)
    side, colour = math.isqrt(n), math.isqrt(n // 3)
    guess = (side, side) if side * side == n and n >= 64 else None
    if guess is None and n % 3 == 0 and colour * colour * 3 == n and n >= 192:
        guess = (3, colour, colour)
    if view == "image" and guess is None:
        raise ConfigError(f"The {n} values of a pool item are not a square image; give its --shape (e.g. 3x32x32).")
    return ("image", guess) if guess is not None and view != "table" else ("table", None)


def png_data_uri(values: np.ndarray, shape: tuple[int, ...]) -> str:
    """One item as a PNG ``data:`` URI, its values stretched to 0-255 and scaled up so it is
    visible in the browser (nearest neighbour: a pixel stays a pixel)."""
    from PIL import Image

    pixels = np.asarray(values, dtype=np.float64).reshape(shape)
    if pixels.ndim == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)  # CHW -> HWC
    lo, hi = np.nanmin(pixels), np.nanmax(pixels)
    scaled = np.zeros_like(pixels) if not hi > lo else (np.nan_to_num(pixels, nan=lo) - lo) / (hi - lo) * 255
    image = Image.fromarray(scaled.round().astype(np.uint8))
    factor = max(1, IMAGE_PIXELS // max(image.size))
    image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(row: pd.Series) -> dict:
    out = {}
    for name, value in row.items():
        if hasattr(value, "__len__") and not isinstance(value, str):
            value = ", ".join(f"{float(v):.4g}" for v in np.asarray(value).reshape(-1))
        elif isinstance(value, (int, float, np.number)):
            value = f"{float(value):.4g}"
        out[str(name)] = str(value)
    return out


def model_version(round: int) -> str:
    return f"round-{round:04d}"


# ---------------------------------------------------------------------------- push


def push(
    folder: str,
    url: str,
    project: str | None = None,
    *,
    pool: str | None = None,
    eval: str | None = None,
    round: int | None = None,
    view: str = "auto",
    shape: str | None = None,
    api_key: str | None = None,
) -> Pushed:
    """The query of ``round`` (default: the latest) as tasks of the Label Studio project
    ``project`` (default ``warmstart <folder name>``), made with the evaluation set's classes
    if it does not exist.  An id already in the project is not pushed again; it gets this
    round's score as a prediction if it lacks one."""
    folder = _local(folder)
    title = _check_title(project or default_title(folder))
    round, query_path = latest_query(folder, round)
    query = read_query(query_path)
    record = recorded(folder)
    pool, eval = _beside(folder, pool, "pool.parquet"), _beside(folder, eval, "eval.parquet")
    if shape is None and record.get("shape"):
        shape = "x".join(map(str, record["shape"]))
    client = connect(url, api_key)
    url = url.rstrip("/")
    features = read_pool(pool, folder, record.get("features"))
    missing = [i for i in query["id"].map(_plain) if i not in features.index]
    if missing:
        raise ConfigError(f"{query_path} names id(s) not in the pool {pool}: {', '.join(map(repr, missing[:5]))}.")
    existing, view, image_shape = _open_project(client, url, folder, title, round, features, record, eval, view, shape)
    version = model_version(round)
    tasks = _call(url, lambda: list(client.tasks.list(project=existing.id, fields="all", page_size=100)))
    new, rescored, present = _new_tasks(client, url, tasks, query, round, features, view, image_shape)
    for start in range(0, len(new), BATCH):
        _call(url, client.projects.import_tasks, existing.id, request=new[start : start + BATCH], return_task_ids=True)
    if new or rescored:
        _call(url, client.projects.update, existing.id, model_version=version)
    return Pushed(title, existing.id, round, len(new), rescored, present, f"{url}/projects/{existing.id}")


def _open_project(client, url: str, folder: str, title: str, round: int, features, record: dict, eval, view, shape):
    """The Label Studio project ``title`` (made with the classes if it does not exist, its
    classes checked against this project's if it does), its view and image shape; its id and
    classes remembered in the folder's state."""
    existing = find_project(client, url, title)
    if existing is None:
        classes = record["classes"] if record.get("classes") else read_classes(eval)
        view, image_shape = choose_view(features, view, parse_shape(shape))
        config = label_config(classes, view)
        created = _call(
            url, client.projects.create, title=title, label_config=config, model_version=model_version(round)
        )
        existing = _call(url, client.projects.get, created.id)
    else:
        classes = None
        names, view = _project_shape(existing)
        ours = record.get("classes") or (read_classes(eval) if eval is not None else None)
        if ours is not None and names != [str(c) for c in ours]:
            raise ConfigError(
                f"Label Studio project {title!r} offers the classes {names}, this project has "
                f"{[str(c) for c in ours]}; name another Label Studio project with --project."
            )
        image_shape = choose_view(features, view, parse_shape(shape))[1] if view == "image" else None
    with _locked(folder):
        state = _read_state(folder, existing.id)
        if classes is not None or "classes" not in state:
            state.update(url=url, project=title, project_id=existing.id)
            state["classes"] = (
                classes if classes is not None else _typed_classes(_project_shape(existing)[0], folder, eval)
            )
            _write_state(folder, existing.id, state)
    return existing, view, image_shape


def _new_tasks(client, url: str, tasks: list, query, round: int, features, view: str, image_shape):
    """The query's rows as new tasks (an id already pushed is not pushed again: it gets this
    round's score as a prediction where it lacks one); (new tasks, rescored, already present)."""
    version = model_version(round)
    known = {}
    for task in tasks:
        if isinstance(task.data, dict) and "ws_id" in task.data:
            known.setdefault(task.data["ws_id"], task)
    new, rescored, present = [], 0, 0
    for rank, row in enumerate(query.itertuples(index=False), start=1):
        item, score = _plain(row.id), _score(row.score)
        task = known.get(item)
        if task is not None:
            if score is None or any(_field(p, "model_version") == version for p in task.predictions or []):
                present += 1
            else:
                _call(url, client.predictions.create, task=task.id, model_version=version, score=score, result=[])
                rescored += 1
            continue
        data = {"ws_id": item, "round": round, "rank": rank, "score": score}
        scored = "" if score is None else f", score {score:.4g}"
        data["heading"] = f"id {item}: round {round}, rank {rank}{scored}"
        values = features.loc[[item]]
        if view == "image":
            data["image"] = png_data_uri(_vectors(values)[0], image_shape)
        else:
            data["features"] = _table(values.iloc[0])
        predictions = [] if score is None else [{"model_version": version, "score": score, "result": []}]
        new.append({"data": data, "predictions": predictions})
    return new, rescored, present


def _score(value: Any) -> float | None:
    """A query's score, or None where the acquisition gave none (round 1's random picks)."""
    if value is None or pd.isna(value):
        return None
    return float(value)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _typed_classes(names: list[str], folder: str, eval: str | None) -> list:
    """A project's choice names as the live project's classes (ints stay ints)."""
    classes = recorded(folder).get("classes")
    if classes:
        return classes
    eval = _beside(folder, eval, "eval.parquet")
    if eval is not None:
        return read_classes(eval)
    return [int(n) if re.fullmatch(r"-?\d+", n) else n for n in names]


# ---------------------------------------------------------------------------- pull


def pull(
    folder: str, url: str, project: str | None = None, *, eval: str | None = None, api_key: str | None = None
) -> Pulled:
    """The finished annotations of ``project`` that no earlier pull wrote, as one label file
    ``DIR/labels/labelstudio-<UTC time>.parquet`` (``id``, ``label``); none when there are none."""
    folder = _local(folder)
    title = _check_title(project or default_title(folder))
    client = connect(url, api_key)
    url = url.rstrip("/")
    found = find_project(client, url, title)
    if found is None:
        titles = _titles(client, url)
        more = f" and {len(titles) - 10} more" if len(titles) > 10 else ""
        has = f"it has {', '.join(map(repr, titles[:10]))}{more}" if titles else "it has no project"
        raise ConfigError(f"Label Studio at {url} has no project {title!r} ({has}); push a query first.")
    names, _ = _project_shape(found)
    with _locked(folder):
        state = _read_state(folder, found.id)
        if _recover(folder, state):
            _write_state(folder, found.id, state)
        classes = state.get("classes") or _typed_classes(names, folder, eval)
        by_name = {str(c): c for c in classes}
        pulled, labelled = set(state.get("pulled", [])), set(map(_key, state.get("ids", [])))
        tasks = _call(url, lambda: list(client.tasks.list(project=found.id, fields="all", page_size=100)))
        rows, new_annotations, (cancelled, repeated, waiting) = _finished(tasks, by_name, pulled, labelled)
        if not new_annotations:
            return Pulled(title, None, 0, cancelled, repeated, waiting)
        path = None
        if rows:
            path = _commit(folder, state, found.id, rows, new_annotations)
        else:  # only repeats: remember them, write no file
            state["pulled"] = sorted(pulled | set(new_annotations))
            _write_state(folder, found.id, state)
        return Pulled(title, path, len(rows), cancelled, repeated, waiting)


def _finished(tasks: list, by_name: dict, pulled: set, labelled: set):
    """From warmstart's tasks: the (id, label) rows of finished annotations not pulled before
    (one label per id: its task's first annotation), those annotations' numbers, and the
    counts (skipped, repeated, waiting).  ``labelled`` grows with the ids labelled here."""
    rows, new_annotations, cancelled, repeated, waiting = [], [], 0, 0, 0
    for task in sorted(tasks, key=lambda t: t.id):
        if not (isinstance(task.data, dict) and "ws_id" in task.data):
            continue  # a task warmstart did not push
        item, finished, skipped = task.data["ws_id"], False, False
        for annotation in sorted(task.annotations or [], key=lambda a: _field(a, "id")):
            number = _field(annotation, "id")
            if _field(annotation, "was_cancelled"):
                skipped = True
                continue
            choice = _choice(annotation)
            if choice is None:
                continue  # an empty annotation: no label
            finished = True
            if number in pulled:
                continue
            if choice not in by_name:
                raise ConfigError(
                    f"Annotation {number} of task {task.id} (id {item!r}) chose {choice!r}, not one of the "
                    f"classes {list(by_name)}; correct it in Label Studio. Nothing written."
                )
            new_annotations.append(number)
            if _key(item) in labelled:
                repeated += 1
                continue
            labelled.add(_key(item))
            rows.append((item, by_name[choice]))
        if not finished:
            cancelled += skipped
            waiting += not skipped
    return rows, new_annotations, (cancelled, repeated, waiting)


def _key(item: Any) -> str:
    return json.dumps(item)


def _choice(annotation: Any) -> str | None:
    for region in _field(annotation, "result") or []:
        if region.get("from_name") == CONTROL and region.get("type") == "choices":
            picked = (region.get("value") or {}).get("choices") or []
            if picked:
                return str(picked[0])
    return None


def _commit(folder: str, state: dict, project_id: int, rows: list, annotations: list[int]) -> str:
    """Write the label file: staged under ``DIR/_labelstudio/``, the state told which
    annotations it holds, then renamed into ``DIR/labels/`` (the commit), then the state
    updated.  ``_recover`` finishes or undoes a pull that stopped between these steps."""
    labels_dir = os.path.join(folder, "labels")
    os.makedirs(labels_dir, exist_ok=True)
    name = _label_name(labels_dir)
    frame = pd.DataFrame({"id": [r[0] for r in rows], "label": [r[1] for r in rows]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    staged = os.path.join(_state_dir(folder), "staging", name)
    put_local(staged, buffer.getvalue())
    state["pending"] = {"file": name, "annotations": annotations, "ids": [r[0] for r in rows]}
    state["project_id"] = project_id
    _write_state(folder, project_id, state)
    final = os.path.join(labels_dir, name)
    _publish(staged, final)
    _recover(folder, state)
    _write_state(folder, project_id, state)
    return final


def _publish(staged: str, final: str) -> None:
    """The commit of a pull: the label file appears in ``DIR/labels/``, whole."""
    os.replace(staged, final)


def _recover(folder: str, state: dict) -> bool:
    """Finish a pull that renamed its label file (its staged copy is gone) or undo one that
    did not; whether ``state`` changed."""
    pending = state.pop("pending", None)
    staging = os.path.join(_state_dir(folder), "staging")
    if pending is not None:
        staged = os.path.join(staging, pending["file"])
        if os.path.exists(staged):  # never committed: the annotations are pulled again
            os.unlink(staged)
        else:
            state["pulled"] = sorted(set(state.get("pulled", [])) | set(pending["annotations"]))
            ids = {_key(i): i for i in state.get("ids", []) + pending["ids"]}
            state["ids"] = list(ids.values())
    if os.path.isdir(staging):
        for stray in os.listdir(staging):  # staged before the state named it
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(staging, stray))
    return pending is not None


def _label_name(labels_dir: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name, n = f"labelstudio-{stamp}.parquet", 1
    while os.path.exists(os.path.join(labels_dir, name)):
        n += 1
        name = f"labelstudio-{stamp}-{n}.parquet"
    return name


# ---------------------------------------------------------------------------- state


def _state_dir(folder: str) -> str:
    return os.path.join(folder, STATE)


def _state_path(folder: str, project_id: int) -> str:
    return os.path.join(_state_dir(folder), f"project-{project_id}.json")


def _read_state(folder: str, project_id: int) -> dict:
    path = _state_path(folder, project_id)
    return _read_json(path, f"{path} is damaged (not JSON): what was pulled is unknown; restore it from a backup.")


def _write_state(folder: str, project_id: int, state: dict) -> None:
    put_local(_state_path(folder, project_id), json.dumps(state, indent=1, sort_keys=True).encode())


def put_local(path: str, payload: bytes) -> None:
    import pyarrow.fs as pafs

    put(pafs.LocalFileSystem(), path, payload)


@contextlib.contextmanager
def _locked(folder: str):
    """One push or pull at a time on a folder (two pulls would write the same annotations)."""
    import fcntl

    os.makedirs(_state_dir(folder), exist_ok=True)
    with open(os.path.join(_state_dir(folder), ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
