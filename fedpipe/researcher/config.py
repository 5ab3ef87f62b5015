"""The experiment configuration of ``fedpipe run``: a TOML file (or a mapping) checked whole before anything starts.

A configuration names the rounds, the nodes, the dataset id the nodes registered, the training
plan class, the strategy (FedAvg, FedProx or SCAFFOLD, with their arguments), secure aggregation,
and the training and model arguments sent to the nodes::

    rounds = 3
    nodes = "all"                      # or ["node-1", "node-2"]
    dataset = "breast-cancer"
    plan_class = "BreastCancerMlp"

    [strategy]
    name = "fedavg"                    # "fedprox" (mu = 0.01), "scaffold" (server_lr = 1.0)

    [training_args]
    epochs = 2

Every mistake is one ``ConfigError`` whose text names the file and the key
(``exp.toml: rounds must be a positive integer``); unknown keys are mistakes too, so a typo never
silently falls back on a default.
"""

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from attrs import frozen
from returns.result import Failure

from fedpipe.args import parse_training_args_mapping
from fedpipe.request import JsonMap, freeze_mapping, json_problem

__all__ = [
    "DEFAULT_TRAINING_ARGS",
    "SECAGG_SCHEMES",
    "STRATEGIES",
    "ConfigError",
    "ExperimentConfig",
    "SecureAggregationConfig",
    "StrategyConfig",
    "load_config",
    "parse_config",
]

STRATEGIES = ("fedavg", "fedprox", "scaffold")
"""The strategy names a configuration may give (any case)."""

SECAGG_SCHEMES = ("lom",)
"""The secure-aggregation schemes ``fedpipe run`` can set up against hand-started nodes.

LOM needs no dealer: the node owners pin each other's identity keys (``fedpipe identity`` /
``fedpipe peers add``) and the nodes agree their keys through the server. Joye-Libert needs a key
share installed on every node by a dealer, which the demo does in-process but a remote
researcher cannot.
"""

DEFAULT_TRAINING_ARGS: Mapping[str, Any] = MappingProxyType(
    {
        "test_ratio": 0.25,
        "test_on_global_updates": True,
        "test_on_local_updates": True,
        "test_metric": "ACCURACY",
    }
)
"""Validation settings used unless the configuration's ``training_args`` set them: without them
no node would report a metric."""

DEFAULT_MU = 0.01
DEFAULT_SERVER_LR = 1.0

_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(ValueError):
    """A configuration that cannot run; its text is one line naming the source and the key."""


@frozen(kw_only=True)
class StrategyConfig:
    """How the researcher aggregates: ``name`` one of ``STRATEGIES``.

    ``mu`` is FedProx's proximal weight (sent to the nodes as ``training_args.fedprox_mu``);
    ``server_lr`` is SCAFFOLD's server learning rate.
    """

    name: str = "fedavg"
    mu: float = DEFAULT_MU
    server_lr: float = DEFAULT_SERVER_LR

    @property
    def label(self) -> str:
        """The strategy's usual spelling (``FedAvg``, ``FedProx``, ``SCAFFOLD``)."""
        return {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD"}[self.name]


@frozen(kw_only=True)
class SecureAggregationConfig:
    """Secure aggregation on or off, and its scheme (one of ``SECAGG_SCHEMES``)."""

    enabled: bool = False
    scheme: str = "lom"


@frozen(kw_only=True)
class ExperimentConfig:
    """A checked experiment configuration (build it with ``parse_config`` or ``load_config``).

    ``nodes`` is None for every node the server knows, else the node ids in order;
    ``training_args`` are the ones sent to the nodes (defaults and the FedProx ``mu`` merged in);
    ``plan_file`` is resolved against the configuration file's folder; ``seed`` seeds the
    initial model; ``job_id`` None draws a fresh one per run; ``round_deadline`` is in seconds.
    """

    rounds: int
    dataset: str
    plan_class: str
    nodes: tuple[str, ...] | None = None
    plan_file: Path | None = None
    strategy: StrategyConfig = StrategyConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    training_args: JsonMap = MappingProxyType(dict(DEFAULT_TRAINING_ARGS))
    model_args: JsonMap = MappingProxyType({})
    seed: int = 0
    job_id: str | None = None
    round_deadline: float = 300.0
    stop_on_failure: bool = False


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "a table" if isinstance(value, Mapping) else type(value).__name__
    )


class _Reader:
    """Takes the keys of one table out one by one; what is left over is unknown."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str = "") -> None:
        self.source = source
        self.left = dict(table)
        self.prefix = prefix

    def fail(self, key: str, rule: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key} {rule}")

    def take(self, key: str) -> Any:
        return self.left.pop(key, None)

    def has(self, key: str) -> bool:
        return key in self.left

    def integer(self, key: str, default: int | None, *, minimum: int, rule: str) -> int:
        value = self.take(key)
        if value is None:
            if default is None:
                raise self.fail(key, f"is missing ({rule})")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be {rule}, not {_shown(value)}")
        return value

    def number(self, key: str, default: float, *, rule: str, positive: bool = False) -> float:
        value = self.take(key)
        if value is None:
            return default
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        number = float(value) if ok else math.nan
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise self.fail(key, f"must be {rule}, not {_shown(value)}")
        return number

    def text(self, key: str, default: str | None, *, pattern: re.Pattern[str], rule: str) -> str:
        value = self.take(key)
        if value is None:
            if default is None:
                raise self.fail(key, f"is missing ({rule})")
            return default
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.fail(key, f"must be {rule}, not {_shown(value)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_shown(value)}")
        return value

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.take(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a table, not {_type_name(value)}")
        return value

    def done(self) -> None:
        if self.left:
            key = sorted(self.left, key=str)[0]
            raise ConfigError(f"{self.source}: unknown key {self.prefix}{_printable(key)}")


def _printable(value: object) -> str:
    text = str(value)
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 60 else clean[:57] + "..."


def _shown(value: object) -> str:
    """A short, printable rendering of a wrong value (``"x"``, ``-1``, ``a table``).

    >>> _shown("x"), _shown(-1), _shown({"a": 1}), _shown(True)
    ("'x'", '-1', 'a table', 'true')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(_printable(value))
    if isinstance(value, int | float):
        return _printable(value)
    return _type_name(value)


def _nodes(reader: _Reader) -> tuple[str, ...] | None:
    value = reader.take("nodes")
    if value is None or value == "all":
        return None
    rule = 'must be "all" or a non-empty list of node ids'
    if not isinstance(value, list) or not value:
        raise reader.fail("nodes", f"{rule}, not {_shown(value)}")
    for item in value:
        if not isinstance(item, str) or not _ID.fullmatch(item):
            raise reader.fail("nodes", f"{rule} (letters, digits, '.', '_', '-'), not {_shown(item)}")
    if len(set(value)) != len(value):
        twice = next(v for v in value if value.count(v) > 1)
        raise reader.fail("nodes", f"names {twice!r} twice")
    return tuple(value)


def _strategy(reader: _Reader) -> StrategyConfig:
    raw = reader.take("strategy")
    if raw is None:
        return StrategyConfig()
    table: Mapping[str, Any] = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(table, Mapping):
        raise reader.fail("strategy", f'must be a name ("fedavg") or a table, not {_type_name(raw)}')
    inner = _Reader(reader.source, table, "strategy.")
    name = inner.take("name")
    if name is None:
        raise inner.fail("name", f"is missing (one of {', '.join(STRATEGIES)})")
    if not isinstance(name, str) or name.lower() not in STRATEGIES:
        raise inner.fail("name", f"must be one of {', '.join(STRATEGIES)}, not {_shown(name)}")
    name = name.lower()
    if name != "fedprox" and inner.has("mu"):
        raise inner.fail("mu", "applies to fedprox only")
    if name != "scaffold" and inner.has("server_lr"):
        raise inner.fail("server_lr", "applies to scaffold only")
    mu = inner.number("mu", DEFAULT_MU, rule="a non-negative number")
    server_lr = inner.number("server_lr", DEFAULT_SERVER_LR, rule="a positive number", positive=True)
    inner.done()
    return StrategyConfig(name=name, mu=mu, server_lr=server_lr)


def _secure(reader: _Reader) -> SecureAggregationConfig:
    raw = reader.take("secure_aggregation")
    if raw is None:
        return SecureAggregationConfig()
    if isinstance(raw, bool):
        return SecureAggregationConfig(enabled=raw)
    if not isinstance(raw, Mapping):
        raise reader.fail("secure_aggregation", f"must be true, false or a table, not {_shown(raw)}")
    inner = _Reader(reader.source, raw, "secure_aggregation.")
    enabled = inner.flag("enabled", True)
    scheme = inner.take("scheme")
    if scheme is None:
        scheme = "lom"
    if not isinstance(scheme, str) or scheme.lower() not in SECAGG_SCHEMES:
        hint = (
            " (Joye-Libert needs key shares installed on each node by a dealer; "
            "`fedpipe run` sets up LOM, whose nodes agree their keys themselves)"
            if isinstance(scheme, str) and scheme.lower().replace("_", "-") in ("joye-libert", "jl")
            else ""
        )
        raise inner.fail("scheme", f"must be one of {', '.join(SECAGG_SCHEMES)}, not {_shown(scheme)}{hint}")
    inner.done()
    return SecureAggregationConfig(enabled=enabled, scheme=scheme.lower())


def _json_table(reader: _Reader, key: str) -> dict[str, Any]:
    table = dict(reader.table(key))
    problem, _ = json_problem(table, key)
    if problem is not None:
        raise ConfigError(f"{reader.source}: {problem.path} {problem.rule}")
    return table


def _training_args(reader: _Reader, strategy: StrategyConfig) -> dict[str, Any]:
    raw = _json_table(reader, "training_args")
    if strategy.name == "fedprox":
        if "fedprox_mu" in raw:
            raise ConfigError(
                f"{reader.source}: training_args.fedprox_mu is set by strategy.mu with fedprox; give it there"
            )
        raw["fedprox_mu"] = strategy.mu
    merged = {**DEFAULT_TRAINING_ARGS, **raw}
    parsed = parse_training_args_mapping(merged)
    if isinstance(parsed, Failure):
        # the public text reads "Invalid training arguments: training argument `x` must ..."
        why = parsed.failure().public.removeprefix("Invalid training arguments: ").rstrip(".")
        raise ConfigError(f"{reader.source}: training_args: {why}")
    return merged


def parse_config(
    table: Mapping[str, Any], *, source: str = "config", base_dir: Path | None = None
) -> ExperimentConfig:
    """Check a configuration mapping (what a TOML file holds) and return it as an ExperimentConfig.

    ``source`` names it in error messages; ``base_dir`` is where a relative ``plan_file`` lies
    (default: the working directory). Raises ``ConfigError`` (one line: source, key, rule) for
    an unknown key, a missing or mistyped value, ``rounds`` < 1, an unknown strategy or scheme,
    training arguments the nodes would refuse, or model arguments that are not plain JSON.

    >>> parse_config({"rounds": 2, "dataset": "d", "plan_class": "P"}).strategy.label
    'FedAvg'
    >>> parse_config({"rounds": 0, "dataset": "d", "plan_class": "P"}, source="exp.toml")
    Traceback (most recent call last):
    fedpipe.researcher.config.ConfigError: exp.toml: rounds must be a positive integer, not 0
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: the configuration must be a table of keys, not {_type_name(table)}")
    reader = _Reader(source, table)
    rounds = reader.integer("rounds", None, minimum=1, rule="a positive integer")
    nodes = _nodes(reader)
    dataset = reader.text("dataset", None, pattern=_ID, rule="a dataset id (letters, digits, '.', '_', '-')")
    plan_class = reader.text("plan_class", None, pattern=_CLASS, rule="a Python class name")
    plan_file: Path | None = None
    if reader.has("plan_file"):
        value = reader.take("plan_file")
        if not isinstance(value, str) or not value.strip():
            raise reader.fail("plan_file", f"must be a file path, not {_shown(value)}")
        plan_file = (base_dir or Path.cwd()) / value
    strategy = _strategy(reader)
    secure = _secure(reader)
    training_args = _training_args(reader, strategy)
    model_args = _json_table(reader, "model_args")
    seed = reader.integer("seed", 0, minimum=0, rule="a non-negative integer")
    job_id = reader.take("job_id")
    if job_id is not None and (not isinstance(job_id, str) or not _ID.fullmatch(job_id)):
        raise reader.fail("job_id", f"must be an id (letters, digits, '.', '_', '-'), not {_shown(job_id)}")
    deadline = reader.number("round_deadline", 300.0, rule="a positive number of seconds", positive=True)
    stop = reader.flag("stop_on_failure", False)
    reader.done()
    return ExperimentConfig(
        rounds=rounds,
        nodes=nodes,
        dataset=dataset,
        plan_class=plan_class,
        plan_file=plan_file,
        strategy=strategy,
        secure_aggregation=secure,
        training_args=freeze_mapping(training_args),
        model_args=freeze_mapping(model_args),
        seed=seed,
        job_id=job_id,
        round_deadline=deadline,
        stop_on_failure=stop,
    )


def load_config(path: Path | str) -> ExperimentConfig:
    """Read and check the TOML configuration at ``path`` (``ConfigError``: one line, the path first).

    A relative ``plan_file`` in it is read against the file's folder.
    """
    shown = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read it ({err.strerror or type(err).__name__})") from err
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{shown}: not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{shown}: not valid TOML ({err})") from err
    return parse_config(table, source=shown, base_dir=Path(path).parent)
