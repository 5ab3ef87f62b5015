"""``simulate``: a configured experiment of ``fedpipe run`` on N virtual nodes of this machine.

The researcher side is ``fedpipe run``'s own (``Experiment``, the strategies of
``build_strategy``, the initial model of ``initial_params_from_plan``); each virtual node runs
the real node round; only the transport is in memory (``fedpipe.simulation.transport``), and an
``Engine`` runs each round's tasks.
"""

import importlib.util
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from returns.result import Failure

from fedpipe.researcher.config import ExperimentConfig
from fedpipe.researcher.experiment import (
    ExperimentResult,
    ExperimentStopped,
    ProgressEvent,
    RoundRecord,
)
from fedpipe.researcher.federation import (
    ResearcherError,
    build_strategy,
    experiment_of,
    initial_params_from_plan,
    plan_file_of,
)
from fedpipe.simulation.engine import ENGINES, EngineOptions, NodesSpec, make_engine
from fedpipe.simulation.nodes import node_ids
from fedpipe.simulation.transport import MemoryBoard, MemoryExchange

__all__ = ["SimulationError", "sampler", "simulate"]


class SimulationError(ResearcherError):
    """A simulation that cannot start (``exit_code`` 2) or that failed while it ran (1); one line."""


def sampler(ids: Sequence[str], per_round: int | None, seed: int) -> Callable[[int], Sequence[str]]:
    """The nodes of each training round: ``per_round`` of ``ids`` drawn with ``seed`` (None: every node).

    A round's draw depends only on ``seed`` and the round's index, so a rerun samples alike.

    >>> pick = sampler(("a", "b", "c", "d"), 2, seed=1)
    >>> pick(0) == pick(0), len(pick(3))
    (True, 2)
    """
    everyone = tuple(ids)
    if per_round is None or per_round >= len(everyone):
        return lambda round_number: everyone

    def pick(round_number: int) -> Sequence[str]:
        rng = np.random.default_rng([seed, round_number])
        chosen = np.sort(rng.choice(len(everyone), size=per_round, replace=False))
        return tuple(everyone[i] for i in chosen)

    return pick


@contextmanager
def _folder(workdir: Path | str | None) -> Iterator[Path]:
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fedpipe-simulate-") as scratch:
            yield Path(scratch)
        return
    path = Path(workdir)
    if (path / "nodes").exists():
        raise SimulationError(f"{path} already holds a simulation's nodes: give an empty or new --workdir")
    path.mkdir(parents=True, exist_ok=True)
    yield path


def _check(config: ExperimentConfig, nodes: int, per_round: int | None) -> None:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise SimulationError(f"the number of nodes must be a positive integer, not {nodes!r}")
    if per_round is not None and (
        isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1
    ):
        raise SimulationError(f"the nodes per round must be a positive integer, not {per_round!r}")
    if per_round is not None and per_round > nodes:
        raise SimulationError(f"{per_round} nodes per round is more than the {nodes} nodes simulated")
    if config.nodes is not None:
        raise SimulationError('a simulation makes its own nodes: leave nodes = "all" in the configuration')
    if config.secure_aggregation.enabled:
        raise SimulationError(
            "secure aggregation is not simulated yet: set secure_aggregation.enabled = false"
        )


def simulate(
    config: ExperimentConfig,
    *,
    nodes: int,
    per_round: int | None = None,
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    rows: int | None = None,
    workdir: Path | str | None = None,
    engine: str = "inline",
    engine_options: EngineOptions | None = None,
    plan_file: Path | str | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> ExperimentResult:
    """Run ``config`` on ``nodes`` virtual nodes holding partitions of the shipped breast-cancer data.

    Each training round samples ``per_round`` nodes (None: all) with ``seed``, which also draws
    the ``partition`` (``"iid"``, ``"label"`` or ``"dirichlet"`` with ``alpha``); the final
    validation runs on every node. The nodes' roots live under ``workdir`` (default: a temporary
    folder removed at the end; a given one must not hold an earlier simulation). ``plan_file``
    defaults to the configuration's. The job id defaults to one derived from ``seed``, so that
    the same arguments give the same model. ``engine`` runs the nodes' rounds (``"inline"``: in
    this process; ``"ray"``: on a pool of Ray actors, set up by ``engine_options``). Rounds,
    aggregation and results are those of ``fedpipe run``. Every expected failure is a
    ``SimulationError`` (one line; ``exit_code`` 2 before the first round, 1 after).
    """
    from fedpipe.simulation.partition import partition as split
    from fedpipe.training import DataError, enlarge, load_breast_cancer

    _check(config, nodes, per_round)
    if engine not in ENGINES:
        raise SimulationError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise SimulationError("the ray engine needs Ray: pip install 'fedpipe[ray]'")
    path = plan_file_of(config, plan_file)
    try:
        plan_source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SimulationError(
            f"cannot read the training plan {path}: {getattr(err, 'strerror', None) or err}"
        ) from err
    try:
        data = load_breast_cancer() if rows is None else enlarge(load_breast_cancer(), rows, seed=seed)
    except DataError as err:
        raise SimulationError(str(err)) from err
    try:
        parts = split(data.labels, nodes, scheme=partition, alpha=alpha, seed=seed)
    except ValueError as err:
        raise SimulationError(f"cannot partition the data: {err}") from err
    ids = node_ids(nodes)
    initial = initial_params_from_plan(path, config.plan_class, config.model_args, seed=config.seed)
    job_id = config.job_id or f"simulation-{seed}"
    strategy, _ = build_strategy(config, initial, ids, job_id)
    with _folder(workdir) as folder:
        spec = NodesSpec(
            # absolute: Ray's workers do not run in this process's folder
            workdir=str(folder.resolve()),
            ids=ids,
            features=data.features,
            labels=data.labels,
            columns=(*data.feature_names, "label"),
            partitions=tuple(parts),
            dataset_id=config.dataset,
            plan_source=plan_source,
        )
        try:
            runner = make_engine(engine, spec, engine_options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            # Ray's messages span lines and name its internals: the first line says enough
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SimulationError(f"cannot start the {engine} engine: {reason}") from err
        exchange = MemoryExchange()
        scratch = folder / "researcher"
        scratch.mkdir(parents=True, exist_ok=True)
        uploaded = exchange.upload(path)
        if isinstance(uploaded, Failure):
            raise SimulationError(f"cannot read the training plan {path}")
        experiment = experiment_of(
            config,
            board=MemoryBoard(runner, exchange),
            exchange=exchange,
            node_ids=ids,
            job_id=job_id,
            plan_source_url=uploaded.unwrap(),
            initial_params=initial,
            strategy=strategy,
            workdir=scratch,
            on_round=on_round,
            on_progress=on_progress,
            sample=sampler(ids, per_round, seed),
        )
        try:
            return experiment.run(config.rounds)
        except ExperimentStopped as err:
            raise SimulationError(str(err), 1) from err
        finally:
            runner.close()
