"""engine/schema/config.py: defaults, YAML file and ``--set`` layering, component handling,
validation (one ConfigError per problem, naming the key), counts, identity, frozenness."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from engine.compute.models import MODELS
from engine.errors import ConfigError
from engine.schema.config import (
    DEFAULTS,
    Config,
    build,
    load_file,
    merge,
    parse_set,
    parse_yaml,
    resolve_count,
    validate,
)

SHRINK_PERTURB_DEFAULTS = {"name": "shrink_perturb", "shrink": 0.4, "perturb": 0.1, "bn_stats": "fresh"}
# The paper's MLP: three hidden layers of 100 tanh units (the builder may take more parameters).
MLP_PAPER = {"name": "mlp", "activation": "tanh", "bias": True, "width": 100, "depth": 3}


def write(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(sets: list[str] = (), path: str | None = None) -> str:
    """Build a config that must be refused; return the one-line message."""
    with pytest.raises(ConfigError) as info:
        build(path, list(sets))
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- defaults ----------------------------------------------------------------------------


def test_defaults_validate_and_fill_component_parameters():
    cfg = validate(DEFAULTS)
    assert isinstance(cfg, Config)
    assert cfg.to_dict() == build().to_dict()
    assert cfg.init.to_dict() == SHRINK_PERTURB_DEFAULTS
    assert cfg.model.to_dict() == {"name": "mlp", **MODELS.get("mlp").defaults}
    assert MLP_PAPER.items() <= cfg.model.to_dict().items()
    assert cfg.acquisition.to_dict() == {"name": "random"}
    assert cfg.dataset.name == "digits"
    assert cfg.batch_size == 128
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.001
    assert cfg.convergence.train_acc == 0.99
    assert cfg.eval.precise_bn is True
    assert cfg.init.params() == {"shrink": 0.4, "perturb": 0.1, "bn_stats": "fresh"}


def test_validate_does_not_modify_its_input():
    before = copy.deepcopy(DEFAULTS)
    validate(DEFAULTS)
    build(sets=["init.name=warm", "seed=3"])
    assert DEFAULTS == before


def test_config_keys_of_the_design_sketch_exist():
    data = build().to_dict()
    sketch = {
        "dataset": ["name", "root", "holdout"],
        "model": ["name"],
        "optimizer": ["name", "lr", "weight_decay"],
        "init": ["name", "shrink", "perturb", "bn_stats"],
        "acquisition": ["name"],
        "rounds": ["initial", "per_round", "max_rounds"],
        "convergence": ["train_acc", "patience", "max_epochs"],
        "scaling": ["workers", "gpus_per_worker"],
    }
    for section, keys in sketch.items():
        for key in keys:
            assert key in data[section], f"{section}.{key}"
    assert "batch_size" in data and "seed" in data


# --- parse_set: values in YAML syntax ----------------------------------------------------------


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("init.shrink=0.5", {"init": {"shrink": 0.5}}),
        ("seed=3", {"seed": 3}),
        ("optimizer.lr=0.01", {"optimizer": {"lr": 0.01}}),
        ("eval.precise_bn=false", {"eval": {"precise_bn": False}}),
        ("dataset.download=true", {"dataset": {"download": True}}),
        ("rounds.max_rounds=null", {"rounds": {"max_rounds": None}}),
        ("rounds.max_rounds=", {"rounds": {"max_rounds": None}}),
        ("plugins=[a.py, b]", {"plugins": ["a.py", "b"]}),
        ("init={name: warm}", {"init": {"name": "warm"}}),
        ("init=warm", {"init": "warm"}),
        ("dataset.root=/tmp/some where", {"dataset": {"root": "/tmp/some where"}}),
        ("a.b.c=x=y", {"a": {"b": {"c": "x=y"}}}),
        ("batch_size=abc", {"batch_size": "abc"}),
    ],
)
def test_parse_set_values_are_yaml(assignment, expected):
    assert parse_set(assignment) == expected


def test_parse_set_keeps_value_types():
    assert type(parse_set("seed=3")["seed"]) is int
    assert type(parse_set("seed=3.0")["seed"]) is float
    assert type(parse_set("x=true")["x"]) is bool


def test_parse_set_reads_exponent_notation_as_float():
    assert parse_set("init.perturb=1e-4") == {"init": {"perturb": 1e-4}}
    assert build(sets=["init.perturb=1e-4"]).init.perturb == 1e-4


@pytest.mark.parametrize("assignment", ["foo", "=3", " =3", ""])
def test_parse_set_without_a_key_is_refused(assignment):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_set(assignment)


# --- layering: defaults, then the file, then each --set ---------------------------------


def test_file_then_set_layering(tmp_path):
    path = write(tmp_path, "seed: 5\nbatch_size: 64\ninit:\n  shrink: 0.3\n  perturb: 0.01\n")
    cfg = build(path, ["init.shrink=0.6", "batch_size=32", "batch_size=16"])
    assert cfg.seed == 5  # from the file
    assert cfg.init.shrink == 0.6  # --set over the file
    assert cfg.init.perturb == 0.01  # the file, untouched by --set
    assert cfg.init.bn_stats == "fresh"  # the default, untouched by either
    assert cfg.batch_size == 16  # the last --set wins
    assert cfg.optimizer.lr == 0.001


def test_empty_file_gives_defaults(tmp_path):
    assert build(write(tmp_path, "")).to_dict() == build().to_dict()


def test_merge_does_not_modify_base():
    base = copy.deepcopy(DEFAULTS)
    out = merge(base, {"rounds": {"per_round": 7}})
    assert out["rounds"]["per_round"] == 7
    assert base == DEFAULTS


@pytest.mark.parametrize(
    "how",
    [
        {"sets": ["init=warm"]},
        {"sets": ["init.name=warm"]},
        {"sets": ["init={name: warm}"]},
        {"file": "init: warm\n"},
        {"file": "init:\n  name: warm\n"},
    ],
)
def test_init_shorthand_and_name_change_drop_old_parameters(tmp_path, how):
    path = write(tmp_path, how["file"]) if "file" in how else None
    cfg = build(path, how.get("sets", []))
    assert cfg.init.to_dict() == {"name": "warm"}
    assert cfg.init.params() == {}


def test_name_change_over_file_component_drops_file_parameters(tmp_path):
    path = write(tmp_path, "init: {name: shrink_perturb, shrink: 0.2, perturb: 0.5}\n")
    assert build(path, ["init.name=random"]).init.to_dict() == {"name": "random"}


def test_same_name_refines_parameters():
    cfg = build(sets=["init.name=shrink_perturb", "init.shrink=0.2"])
    assert cfg.init.to_dict() == {**SHRINK_PERTURB_DEFAULTS, "shrink": 0.2}


def test_switching_back_to_shrink_perturb_fills_its_defaults():
    cfg = build(sets=["init=warm", "init={name: shrink_perturb, perturb: 0.01}"])
    assert cfg.init.to_dict() == {**SHRINK_PERTURB_DEFAULTS, "perturb": 0.01}


def test_model_parameters_filled_with_registry_defaults():
    cfg = build(sets=["model.name=resnet18"])
    assert cfg.model.to_dict() == {"name": "resnet18", **MODELS.get("resnet18").defaults}
    assert cfg.model.width == 16  # the authors' width
    assert "activation" not in cfg.model.to_dict()  # mlp's parameters were dropped with its name
    cfg = build(sets=["model.width=50"])
    assert cfg.model.to_dict() == {"name": "mlp", **MODELS.get("mlp").defaults, "width": 50}
    cfg = build(sets=["model=logreg"])
    assert cfg.model.to_dict() == {"name": "logreg", **MODELS.get("logreg").defaults}
    assert cfg.model.bias is True


def test_parameter_of_the_old_component_is_refused_for_the_new_one():
    message = refused(["init.name=warm", "init.shrink=0.5"])
    assert "'shrink'" in message and "warm()" in message


# --- unknown and misspelt keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment, dotted, suggestion",
    [
        ("rounds.per_rond=3", "rounds.per_rond", "per_round"),
        ("sed=1", "sed", "seed"),
        ("convergence.train_ac=0.9", "convergence.train_ac", "train_acc"),
        ("dataset.holdot=0.5", "dataset.holdot", "holdout"),
        ("batchsize=64", "batchsize", "batch_size"),
    ],
)
def test_misspelt_key_names_the_dotted_key_and_suggests(assignment, dotted, suggestion):
    message = refused([assignment])
    assert repr(dotted) in message
    assert f"Did you mean {suggestion!r}" in message


def test_unknown_key_without_a_close_match_lists_known_keys():
    message = refused(["zzzzzz=1"])
    assert "'zzzzzz'" in message
    assert "Did you mean" not in message
    for key in ("seed", "dataset", "rounds", "init"):
        assert key in message


def test_misspelt_key_in_file_is_refused(tmp_path):
    path = write(tmp_path, "rounds:\n  per_rond: 3\n")
    message = refused(path=path)
    assert "'rounds.per_rond'" in message and "'per_round'" in message


def test_unknown_component_parameter_shows_signature():
    message = refused(["model.widht=8"])
    assert "'widht'" in message
    assert MODELS.get("mlp").signature() in message
    assert "width=100" in message
    message = refused(["init.shrnk=0.5"])
    assert "'shrnk'" in message
    assert "shrink_perturb(shrink=0.4, perturb=0.1, bn_stats='fresh')" in message


def test_section_set_to_a_scalar_is_refused():
    message = refused(["rounds=5"])
    assert "'rounds'" in message and "per_round" in message
    message = refused(["init=5"])
    assert "'init'" in message


@pytest.mark.parametrize(
    "key, value, known",
    [
        ("init.name", "bogus", ["random", "shrink_perturb", "warm"]),
        ("model.name", "vgg", ["logreg", "mlp", "resnet18"]),
        ("acquisition.name", "entropyy", ["margin", "random"]),
        ("dataset.name", "mnist", ["cifar10", "cifar100", "digits", "svhn"]),
    ],
)
def test_unknown_name_lists_known_ones(key, value, known):
    message = refused([f"{key}={value}"])
    assert repr(value) in message
    for name in known:
        assert name in message


# --- wrong types and out-of-range values ---------------------------------------------------


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("batch_size=abc", "batch_size"),
        ("batch_size=1.5", "batch_size"),
        ("batch_size=0", "batch_size"),
        ("batch_size=true", "batch_size"),
        ("seed=-1", "seed"),
        ("seed=true", "seed"),
        ("seed=1.0", "seed"),
        ("rounds.max_rounds=0", "rounds.max_rounds"),
        ("rounds.max_rounds=true", "rounds.max_rounds"),
        ("convergence.max_epochs=false", "convergence.max_epochs"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("optimizer.name=rmsprop", "optimizer.name"),
        ("eval.precise_bn=1", "eval.precise_bn"),
        ("dataset.eval=train", "dataset.eval"),
        ("device=gpu", "device"),
        ("plugins=a.py", "plugins"),
    ],
)
def test_wrong_type_or_value_is_refused_naming_the_key(assignment, key):
    message = refused([assignment])
    assert f"'{key}'" in message
    assert "must be" in message
    assert "Got" in message


@pytest.mark.parametrize("value", ["0", "1", "0.0", "1.0", "1.5", "-0.2", "abc"])
def test_holdout_outside_open_unit_interval_is_refused(value):
    message = refused([f"dataset.holdout={value}"])
    assert "'dataset.holdout'" in message and "(0, 1)" in message


@pytest.mark.parametrize("value", [0.5, 0.1, 0.9])
def test_holdout_inside_is_accepted(value):
    assert build(sets=[f"dataset.holdout={value}"]).dataset.holdout == value


@pytest.mark.parametrize("value", ["0", "0.0", "1.5", "-0.5", "true"])
def test_threshold_outside_zero_one_is_refused(value):
    message = refused([f"convergence.train_acc={value}"])
    assert "'convergence.train_acc'" in message and "(0, 1]" in message


@pytest.mark.parametrize("value, expected", [("1.0", 1.0), ("1", 1), ("0.5", 0.5), ("0.999", 0.999)])
def test_threshold_up_to_one_is_accepted(value, expected):
    assert build(sets=[f"convergence.train_acc={value}"]).convergence.train_acc == expected


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "1.0", "0.0", "abc", "true"])
@pytest.mark.parametrize("key", ["rounds.per_round", "rounds.initial"])
def test_count_outside_allowed_is_refused(key, value):
    message = refused([f"{key}={value}"])
    assert f"'{key}'" in message
    assert "int >= 1" in message and "(0, 1)" in message


@pytest.mark.parametrize("value, expected", [("1", 1), ("250", 250), ("0.5", 0.5), ("0.01", 0.01)])
def test_count_as_int_or_fraction_is_accepted(value, expected):
    cfg = build(sets=[f"rounds.per_round={value}"])
    assert cfg.rounds.per_round == expected
    assert type(cfg.rounds.per_round) is type(expected)


@pytest.mark.parametrize(
    "assignment, message_part",
    [
        ("init.shrink=1.5", "'shrink' parameter of shrink_perturb must be a float in [0, 1]. Got 1.5."),
        ("init.shrink=-0.1", "'shrink' parameter of shrink_perturb"),
        ("init.perturb=-1", "'perturb' parameter of shrink_perturb must be a float >= 0. Got -1."),
        ("init.bn_stats=reuse", "'bn_stats' parameter of shrink_perturb must be one of 'fresh', 'keep'"),
        ("model.activation=gelu", "'activation' parameter of mlp"),
        ("model.bias=1", "'bias' parameter of mlp"),
    ],
)
def test_component_parameters_are_checked(assignment, message_part):
    assert message_part in refused([assignment])


@pytest.mark.parametrize("shrink, perturb", [(0, 0), (1, 0), (0.0, 1.0), (1.0, 5.0), (0.6, 0.01)])
def test_component_boundaries_accepted(shrink, perturb):
    cfg = build(sets=[f"init.shrink={shrink}", f"init.perturb={perturb}"])
    assert (cfg.init.shrink, cfg.init.perturb) == (shrink, perturb)


# --- YAML files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line",
    [
        ("seed: 0\nbatch_size: 64\ninit: name: warm\n", 3),
        ("seed: 0\n  bad: 1\n", 2),
        ("seed: 0\ndataset:\n  name: digits\n  root: [unclosed\nrounds:\n  per_round: 3\n", 5),
    ],
)
def test_malformed_yaml_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    message = refused(path=path)
    assert "Malformed YAML" in message
    assert path in message
    assert f"line {line}" in message


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("42\n", "int"), ("just a string\n", "str")])
def test_yaml_not_a_mapping_is_refused(tmp_path, text, kind):
    path = write(tmp_path, text)
    message = refused(path=path)
    assert "mapping" in message and kind in message and path in message


def test_yaml_with_non_string_key_is_refused(tmp_path):
    message = refused(path=write(tmp_path, "1: 2\n"))
    assert "1" in message


def test_missing_config_file_is_refused(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_file(path)
    assert "nope.yaml" in refused(path=path)


def test_parse_yaml_empty_is_empty_mapping():
    assert parse_yaml("", "x") == {}
    assert parse_yaml("# only a comment\n", "x") == {}


# --- counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, pool, expected",
    [
        (100, 1198, 100),
        (1, 1198, 1),
        (1198, 1198, 1198),
        (0.5, 1198, 599),
        (0.5, 1197, 599),  # 598.5 rounds half up
        (0.25, 1000, 250),
        (0.3333, 1198, 399),
        (0.999, 1198, 1197),
    ],
)
def test_resolve_count(value, pool, expected):
    count = resolve_count(value, pool, "rounds.per_round")
    assert count == expected
    assert type(count) is int


@pytest.mark.parametrize("value, pool", [(1199, 1198), (5000, 1198), (0.0001, 1198), (0, 10), (1, 0)])
def test_resolve_count_outside_pool_is_refused(value, pool):
    with pytest.raises(ConfigError) as info:
        resolve_count(value, pool, "rounds.per_round")
    message = str(info.value)
    assert "'rounds.per_round'" in message
    assert f"pool size {pool}" in message


# --- identity ----------------------------------------------------------------------------------


def test_trial_id_stable_for_equal_configs():
    a = build(sets=["seed=1", "init.shrink=0.5"])
    b = build(sets=["init.shrink=0.5", "seed=1"])
    assert a.trial_id() == a.trial_id() == b.trial_id()
    assert a.trial_id().startswith("digits-mlp-shrink_perturb-random-s1-")


@pytest.mark.slow
def test_trial_id_same_in_another_process():
    sets = ["seed=4", "init.shrink=0.3", "model.width=20"]
    code = f"import sys, engine.compute.builtins; from engine.schema.config import build; sys.stdout.write(build(sets={sets!r}).trial_id())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == build(sets=sets).trial_id()


@pytest.mark.parametrize(
    "change",
    [
        ["seed=1"],
        ["init.shrink=0.5"],
        ["init.perturb=0.2"],
        ["init.name=warm"],
        ["rounds.per_round=50"],
        ["optimizer.lr=0.01"],
        ["model.width=50"],
        ["acquisition.name=margin"],
        ["convergence.train_acc=0.95"],
        ["eval.precise_bn=false"],
        ["dataset.holdout=0.5"],
    ],
)
def test_trial_id_changes_with_what_the_trial_computes(change):
    assert build(sets=change).trial_id() != build().trial_id()


@pytest.mark.parametrize(
    "change",
    [
        ["device=cpu"],
        ["device=cuda:1"],
        ["dataset.root=/somewhere/else"],
        ["dataset.download=false"],
        ["dataset.root=/x", "device=cpu"],
    ],
)
def test_trial_id_ignores_where_it_runs(change):
    assert build(sets=change).trial_id() == build().trial_id()


def test_explicit_trial_id_is_used():
    assert build(sets=["trial_id=my-trial"]).trial_id() == "my-trial"


def test_same_config_different_seeds_differ_only_in_seed_part():
    a, b = build(sets=["seed=0"]).trial_id(), build(sets=["seed=7"]).trial_id()
    assert "-s0-" in a and "-s7-" in b


# --- frozen ------------------------------------------------------------------------------


def test_config_is_frozen():
    cfg = build()
    with pytest.raises(AttributeError):
        cfg.seed = 3
    with pytest.raises(AttributeError):
        cfg.init.shrink = 0.9
    with pytest.raises(AttributeError):
        cfg.rounds = {}
    assert cfg.seed == 0 and cfg.init.shrink == 0.4


def test_to_dict_is_a_copy():
    cfg = build()
    data = cfg.to_dict()
    data["seed"] = 99
    data["init"]["shrink"] = 0.9
    assert cfg.seed == 0 and cfg.init.shrink == 0.4
    params = cfg.init.params()
    params["shrink"] = 0.9
    assert cfg.init.shrink == 0.4


def test_config_lists_cannot_be_mutated():
    cfg = build()
    try:
        cfg.plugins.append("sneaky.py")
    except AttributeError:
        pass  # an immutable sequence is fine
    assert list(cfg.plugins) == []


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        build().no_such_key  # noqa: B018


def test_yaml_round_trip_gives_same_identity():
    import yaml

    cfg = build(sets=["seed=3", "init=warm", "rounds.per_round=0.5"])
    again = Config(yaml.safe_load(cfg.to_yaml()))
    assert again.identity() == cfg.identity()
    assert again.trial_id() == cfg.trial_id()
