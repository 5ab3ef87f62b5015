"""The experiment configuration: good files parse into what they say; every bad one is one clear line."""

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.researcher.config import (
    DEFAULT_TRAINING_ARGS,
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_config,
)

BASE: dict[str, Any] = {"rounds": 3, "dataset": "breast-cancer", "plan_class": "BreastCancerMlp"}


def test_the_example_configuration_parses(tmp_path: Path) -> None:
    """examples/experiment.toml is valid, and its plan file is found next to it."""
    example = Path(__file__).parents[2] / "examples" / "experiment.toml"
    config = load_config(example)
    assert (config.rounds, config.nodes, config.strategy.name) == (3, None, "fedavg")
    assert config.plan_file is not None and config.plan_file.is_file()
    assert config.training_args["epochs"] == 2 and len(config.model_args["feature_mean"]) == 30


def test_a_full_configuration(tmp_path: Path) -> None:
    """Every key lands where it belongs; defaults fill the rest; FedProx's mu travels in training_args."""
    path = tmp_path / "exp.toml"
    path.write_text(
        """
rounds = 5
nodes = ["node-a", "node-b"]
dataset = "ds"
plan_class = "Plan"
plan_file = "plans/plan.py"
seed = 7
job_id = "study-1"
round_deadline = 60
stop_on_failure = true
strategy = { name = "FedProx", mu = 0.5 }
secure_aggregation = { enabled = true, scheme = "lom" }
[training_args]
epochs = 1
loader_args = { batch_size = 8 }
[model_args]
hidden = [4, 4]
"""
    )
    config = load_config(path)
    assert config.nodes == ("node-a", "node-b")
    assert config.plan_file == tmp_path / "plans" / "plan.py"
    assert (config.seed, config.job_id, config.round_deadline, config.stop_on_failure) == (
        7,
        "study-1",
        60.0,
        True,
    )
    assert (config.strategy.name, config.strategy.mu, config.strategy.label) == ("fedprox", 0.5, "FedProx")
    assert config.secure_aggregation.enabled and config.secure_aggregation.scheme == "lom"
    assert config.training_args["fedprox_mu"] == 0.5
    assert config.training_args["loader_args"]["batch_size"] == 8
    assert config.training_args["test_ratio"] == DEFAULT_TRAINING_ARGS["test_ratio"]
    assert config.model_args["hidden"] == [4, 4]


def test_minimal_configuration_defaults() -> None:
    """Only rounds, dataset and plan class are needed: every node, FedAvg, no secure aggregation."""
    config = parse_config(BASE)
    assert config == ExperimentConfig(rounds=3, dataset="breast-cancer", plan_class="BreastCancerMlp")
    assert config.nodes is None and not config.secure_aggregation.enabled
    assert dict(config.training_args) == dict(DEFAULT_TRAINING_ARGS)
    assert parse_config({**BASE, "nodes": "all", "strategy": "scaffold"}).strategy.server_lr == 1.0
    assert not parse_config({**BASE, "secure_aggregation": False}).secure_aggregation.enabled


BAD: list[tuple[dict[str, Any], str]] = [
    ({"rounds": 0}, "rounds must be a positive integer, not 0"),
    ({"rounds": -1}, "rounds must be a positive integer, not -1"),
    ({"rounds": 2.5}, "rounds must be a positive integer, not 2.5"),
    ({"rounds": True}, "rounds must be a positive integer, not true"),
    ({"rounds": "3"}, "rounds must be a positive integer, not '3'"),
    ({"rounds": None}, "rounds is missing"),
    ({"dataset": None}, "dataset is missing"),
    ({"dataset": "a b"}, "dataset must be a dataset id"),
    ({"plan_class": "not a class"}, "plan_class must be a Python class name"),
    ({"roundz": 3}, "unknown key roundz"),
    ({"nodes": []}, 'nodes must be "all" or a non-empty list of node ids'),
    ({"nodes": "node-1"}, 'nodes must be "all" or a non-empty list'),
    ({"nodes": ["a", 1]}, "nodes must be"),
    ({"nodes": ["a", "a"]}, "nodes names 'a' twice"),
    ({"strategy": "fedsgd"}, "strategy.name must be one of fedavg, fedprox, scaffold, not 'fedsgd'"),
    ({"strategy": {"mu": 1}}, "strategy.name is missing"),
    ({"strategy": 3}, "strategy must be a name"),
    ({"strategy": {"name": "fedavg", "mu": 0.1}}, "strategy.mu applies to fedprox only"),
    ({"strategy": {"name": "fedprox", "mu": -1}}, "strategy.mu must be a non-negative number, not -1"),
    ({"strategy": {"name": "scaffold", "server_lr": 0}}, "strategy.server_lr must be a positive number"),
    ({"strategy": {"name": "scaffold", "lr": 1}}, "unknown key strategy.lr"),
    ({"secure_aggregation": {"scheme": "joye-libert"}}, "secure_aggregation.scheme must be one of lom"),
    ({"secure_aggregation": {"enabled": "yes"}}, "secure_aggregation.enabled must be true or false"),
    ({"secure_aggregation": {"enabled": True, "key": 1}}, "unknown key secure_aggregation.key"),
    ({"secure_aggregation": "on"}, "secure_aggregation must be true, false or a table"),
    ({"training_args": {"epochs": -1}}, "training_args: training argument `epochs` must be"),
    (
        {"training_args": {"epoch": 1}},
        "training_args: training argument `epoch` is not a known training argument",
    ),
    ({"training_args": 3}, "training_args must be a table, not an integer"),
    (
        {"strategy": {"name": "fedprox"}, "training_args": {"fedprox_mu": 1}},
        "training_args.fedprox_mu is set by strategy.mu",
    ),
    ({"model_args": [1]}, "model_args must be a table, not a list"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"job_id": "a/b"}, "job_id must be an id"),
    ({"round_deadline": 0}, "round_deadline must be a positive number of seconds"),
    ({"round_deadline": float("inf")}, "round_deadline must be a positive number of seconds"),
    ({"stop_on_failure": 1}, "stop_on_failure must be true or false, not 1"),
    ({"plan_file": ""}, "plan_file must be a file path"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_a_bad_configuration_is_one_line_naming_the_file_and_key(
    change: dict[str, Any], message: str
) -> None:
    """Each mistake is a ConfigError: one line, the source first, then the key and its rule."""
    table = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        parse_config(table, source="exp.toml")
    text = str(caught.value)
    assert text.startswith("exp.toml: ") and message in text, text
    assert "\n" not in text


def test_unreadable_or_invalid_toml_files(tmp_path: Path) -> None:
    """A missing file, bytes that are not UTF-8 and broken TOML are one line each, the path first."""
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = = 3\n")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe rounds")
    for path, why in (
        (tmp_path / "absent.toml", "cannot read it"),
        (broken, "not valid TOML"),
        (binary, "not UTF-8"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert str(caught.value).startswith(f"{path}: {why}") and "\n" not in str(caught.value)


KEYS = ["rounds", "nodes", "dataset", "plan_class", "strategy", "secure_aggregation", "training_args", "seed"]
json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
toml_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
)


@given(
    st.dictionaries(
        st.sampled_from([*KEYS, "model_args", "job_id", "round_deadline"]) | st.text(max_size=8), toml_value
    )
)
def test_parsing_is_total(table: dict[str, Any]) -> None:
    """Any mapping gives an ExperimentConfig or a one-line ConfigError, never another exception."""
    try:
        config = parse_config(table, source="x.toml")
    except ConfigError as err:
        assert str(err).startswith("x.toml: ") and "\n" not in str(err)
    else:
        assert config.rounds >= 1


@given(
    rounds=st.integers(1, 10**6),
    nodes=st.lists(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), min_size=1, max_size=5, unique=True),
)
def test_valid_rounds_and_nodes_are_kept(rounds: int, nodes: list[str]) -> None:
    """Whatever valid rounds and node list a file gives come back unchanged."""
    config = parse_config({**BASE, "rounds": rounds, "nodes": nodes})
    assert config.rounds == rounds and config.nodes == tuple(nodes)
