"""The cfg.* columns keep each config key's type (issue 23): integers int64, booleans bool,
lists of numbers lists of int64, typed from the allowed values declared next to each key
(engine/schema/config.py, each registered builder's constraints), never text where a key
takes one kind.  The expected type is derived here from what each declaration accepts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.schema.catalogue import DATASETS
from engine.schema.config import ALLOWED, COMPONENTS, DEFAULTS, PRETRAIN_ALLOWED, build, component_registry, flatten
from engine.schema.records import CONFIG_PREFIX, SHORT_NAMES, arrow_schema, config_columns, with_short_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INTS = (0, 1, 2, 1000)
FLOATS = (0.5, 1.5, 2.5, 1000.5)
STRINGS = ("abc", "cpu", "x.npz")


def _accepts(constraint, value) -> bool:
    try:
        return bool(constraint.check(value))
    except Exception:
        return False


def expected_type(constraint, default) -> pa.DataType:
    """The column type a key's declaration asks for, from the values it accepts ('auto' aside:
    null), or from its default where nothing is declared."""
    if constraint is None:
        return _type_of_default(default)
    strings = [*STRINGS, *(o for o in getattr(constraint, "options", ()) if isinstance(o, str))]
    takes_str = any(_accepts(constraint, s) for s in strings)
    takes_str_list = _accepts(constraint, ["a", "b"])
    takes_int_list = _accepts(constraint, [1, 2]) or _accepts(constraint, [36, 60])
    if takes_str and takes_str_list:  # a name or a list of names: JSON text
        return pa.string()
    if takes_int_list:
        return pa.list_(pa.int64())
    if takes_str_list:
        return pa.list_(pa.string())
    if takes_str:
        return pa.string()
    if _accepts(constraint, True) or _accepts(constraint, False):
        return pa.bool_()
    if any(_accepts(constraint, f) for f in FLOATS):
        return pa.float64()  # a float, or a count or a fraction (rounds.initial)
    assert any(_accepts(constraint, i) for i in INTS), constraint
    return pa.int64()


def _type_of_default(default) -> pa.DataType:
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, int):
        return pa.int64()
    if isinstance(default, float):
        return pa.float64()
    if isinstance(default, list) and default and all(isinstance(v, int) for v in default):
        return pa.list_(pa.int64())
    return pa.string()  # a string, or null: JSON text


def name(arrow: pa.DataType) -> str:
    """A type's name, lists by their element type (Parquet renames a list's item field)."""
    return f"list<{name(arrow.value_type)}>" if pa.types.is_list(arrow) else str(arrow)


def declared(key: str) -> list[pa.DataType]:
    """The column type each declaration of ``key`` asks for (components: every builder that has it)."""
    section, _, param = key.partition(".")
    if key in ALLOWED:
        return [expected_type(ALLOWED[key], flatten(DEFAULTS).get(key))]
    if section == "pretrain":
        return [pa.string() if param == "dataset" else expected_type(PRETRAIN_ALLOWED[param], None)]
    if param == "name":
        return [pa.string()]
    registry = DATASETS if section == "dataset" else component_registry(section)
    types = [
        expected_type(e.constraints.get(param), e.defaults[param]) for e in registry.entries() if param in e.defaults
    ]
    return types if types else [_type_of_default(flatten(DEFAULTS).get(key))]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("types") / "out"
    sets = ["device=cpu", "rounds.max_rounds=1", "convergence.max_epochs=1", "rounds.initial=1000"]
    assert main(["run", "--quiet", "--out", str(out)] + sum((["--set", s] for s in sets), [])) == 0
    return pq.read_table(out)


def test_every_cfg_column_of_a_written_row_has_its_keys_declared_type(written):
    columns = [name for name in written.schema.names if name.startswith(CONFIG_PREFIX)]
    assert len(columns) > 60 and set(COMPONENTS) <= {c.split(".")[1] for c in columns}
    wrong = {}
    for column in columns:
        key = column[len(CONFIG_PREFIX) :]
        kinds = set(map(name, declared(key)))
        want = kinds.pop() if len(kinds) == 1 else "string"  # builders that disagree: JSON text
        if name(written.schema.field(column).type) != want:
            wrong[column] = (name(written.schema.field(column).type), want)
    assert wrong == {}


def test_values_keep_their_kind(written):
    (row,) = written.to_pylist()
    assert row["cfg.rounds.initial"] == 1000.0 and row["cfg.rounds.per_round"] == 100.0  # a count or a fraction
    assert row["cfg.batch_size"] == 128 and type(row["cfg.convergence.max_epochs"]) is int
    assert row["cfg.eval.precise_bn"] is True and row["cfg.scaling.sync_batchnorm"] is False
    # 'auto' or a bool / an int: the bool or int column, null for 'auto'.
    assert row["cfg.performance.autocast"] is None and row["cfg.performance.compile"] is False
    assert row["cfg.performance.inference_batch_size"] is None and row["cfg.performance.ensemble_size"] == 32


def test_lists_of_numbers_stay_lists_of_numbers():
    cfg = build(sets=["dataset.name=mnist1d", "performance.autocast=true", "performance.inference_batch_size=512"])
    values = config_columns({**cfg.to_dict(), "trial_id": cfg.trial_id()})
    assert values["dataset.padding"] == [36, 60]
    assert values["performance.autocast"] is True and values["performance.inference_batch_size"] == 512
    row = pa.Table.from_pylist([{CONFIG_PREFIX + k: v for k, v in values.items()}])
    schema = arrow_schema()
    assert schema.field("cfg.dataset.padding").type == pa.list_(pa.int64())
    assert schema.field("cfg.plugins").type == pa.list_(pa.string())
    assert row.column("cfg.dataset.padding").to_pylist() == [[36, 60]]


def test_a_name_or_a_list_of_names_is_json_text():
    cfg = build(sets=["dataset.name=files", "dataset.train=x.npz", "dataset.inputs=[a, b]"])
    values = config_columns({**cfg.to_dict(), "trial_id": cfg.trial_id()})
    assert values["dataset.inputs"] == '["a", "b"]'


def test_a_row_holds_its_config_once_as_cfg_columns(written):
    """Issue 24: no flat copy of a cfg.* column (`init`, `lr`, ...) and no JSON copy of a section
    (`model_params`, ...) is written; what is not a config value stays (trial_id, round, ...)."""
    names = set(written.schema.names)
    assert not names & set(SHORT_NAMES)
    assert not names & {"model_params", "init_params", "acquisition_params", "pretrain_params"}
    assert {"trial_id", "seed", "round", "test_acc", "shrink", "perturb", "momentum", "per_round"} <= names
    assert all(column in names for column, *_ in SHORT_NAMES.values())


def test_the_short_names_load_adds_equal_their_cfg_columns(written, tmp_path):
    """results.load names the most used cfg.* columns short, each a copy of its column, typed as it is."""
    from engine.analysis import results

    (row,) = written.to_pylist()
    pq.write_table(written, tmp_path / f"{row['trial_id']}-round{row['round']:04d}.parquet")
    frame = results.load(str(tmp_path))
    for short, (column, *_) in SHORT_NAMES.items():
        assert frame[short].astype(object).tolist() == frame[column].tolist(), short
    assert (frame["init"].iloc[0], frame["lr"].iloc[0], frame["batch_size"].iloc[0]) == ("shrink_perturb", 0.001, 128)
    assert frame["dataset"].iloc[0] == "digits" and frame["eval_split"].iloc[0] == "holdout"
    assert frame["pretrain_dataset"].isna().all() and frame["bn_stats"].iloc[0] == "fresh"
    assert with_short_names(row)["init"] == row["cfg.init.name"]  # one row as a dict, as for a tracker
