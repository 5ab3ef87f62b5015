"""The researcher's way into a running ``fedpipe serve``: connect, pick the nodes, run a configured experiment.

``fedpipe run`` and the quickstart notebook both go through ``connect`` and ``run_experiment``::

    config = load_config("exp.toml")            # or parse_config({...})
    with connect("http://127.0.0.1:8844", token) as federation:
        result = run_experiment(config, federation, plan_file="plan.py", workdir=scratch)
    save_outputs(result, "out")

Every expected failure is a ``ResearcherError`` whose text is one line and whose ``exit_code``
says whose it is: 2, the researcher's input found wrong before any task is posted (server URL,
token, plan file, unknown nodes); 1, a failure while the experiment runs (no node succeeded in a
round, the server went away, secure aggregation did not add up).
"""

import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from attrs import define
from returns.result import Failure

from fedpipe.args import TrainingArgs
from fedpipe.ports import FileExchange
from fedpipe.request import thaw
from fedpipe.researcher.board import BoardClient, BoardError
from fedpipe.researcher.config import ExperimentConfig
from fedpipe.researcher.experiment import (
    Experiment,
    ExperimentResult,
    ExperimentStopped,
    ProgressEvent,
    RoundRecord,
    Strategy,
)
from fedpipe.researcher.strategies import FedAvg, ScaffoldStrategy

__all__ = [
    "Federation",
    "ResearcherError",
    "build_strategy",
    "check_server_url",
    "connect",
    "experiment_of",
    "initial_params_from_plan",
    "plan_file_of",
    "run_experiment",
    "select_nodes",
]

STALE_AFTER_S = 120.0
"""A node whose last poll is older than this is reported as possibly stopped."""


class ResearcherError(Exception):
    """An experiment that cannot start (``exit_code`` 2) or that failed while it ran (1); one line."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def experiment_of(config: ExperimentConfig, **parts: Any) -> Experiment:
    """The ``Experiment`` of ``config`` (plan class, dataset, training and model args, deadline,
    stop on failure), with ``parts`` for the rest (board, exchange, nodes, plan URL, strategy...)."""
    return Experiment(
        plan_class=config.plan_class,
        dataset_id=config.dataset,
        training_args=thaw(config.training_args),
        model_args=thaw(config.model_args),
        round_deadline_s=config.round_deadline,
        stop_on_failure=config.stop_on_failure,
        **parts,
    )


def plan_file_of(config: ExperimentConfig, plan_file: Path | str | None = None) -> Path:
    """The training plan file: ``plan_file``, else the configuration's; ResearcherError (exit 2) when
    there is none or it is not a file."""
    source = plan_file if plan_file is not None else config.plan_file
    if source is None:
        raise ResearcherError("no training plan: give one with --plan, or plan_file in the configuration")
    if not Path(source).is_file():
        raise ResearcherError(f"no training plan file at {source}")
    return Path(source)


def check_server_url(url: str) -> str:
    """The server's base URL without a trailing ``/``; ResearcherError unless ``http(s)://host[:port]``.

    >>> check_server_url("http://127.0.0.1:8844/")
    'http://127.0.0.1:8844'
    >>> check_server_url("127.0.0.1:8844")
    Traceback (most recent call last):
    fedpipe.researcher.federation.ResearcherError: the server URL must be http(s)://host[:port], not '127.0.0.1:8844'
    """
    problem = ResearcherError(f"the server URL must be http(s)://host[:port], not {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        raise problem from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise problem
    if parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
        raise problem
    return url.rstrip("/")


@define
class Federation:
    """A connection to one server as one researcher: the task board and the file exchange.

    Build it with ``connect``; close it (or use it as a context manager) when done.
    """

    server_url: str
    board: BoardClient
    exchange: FileExchange

    def nodes(self) -> dict[str, float]:
        """The nodes the server knows (they connected at least once), with their last poll time."""
        try:
            return self.board.nodes()
        except BoardError as err:
            raise _board_problem(err, self.server_url) from err

    def close(self) -> None:
        """Close the connections."""
        self.board.close()
        close = getattr(self.exchange, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> "Federation":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _board_problem(err: BoardError, server_url: str) -> ResearcherError:
    if err.status == 401:
        return ResearcherError(
            f"the server at {server_url} refused the researcher token (HTTP 401): "
            "issue one with `fedpipe tokens issue --researcher NAME`"
        )
    if err.status == 403:
        return ResearcherError(
            f"the server at {server_url} refused the token (HTTP 403): it is not a researcher token"
        )
    if err.status is None:
        return ResearcherError(f"cannot reach the server at {server_url} (is `fedpipe serve` running?)")
    return ResearcherError(f"the server at {server_url} answered: {err}")


def connect(
    server_url: str, token: str, *, ca_file: Path | str | None = None, timeout: float = 30.0
) -> Federation:
    """Connect to ``fedpipe serve`` at ``server_url`` with a researcher ``token`` and check both.

    ``ca_file`` verifies an HTTPS server signed by a private CA. ResearcherError (exit code 2)
    when the URL is malformed, the server cannot be reached, or it refuses the token.
    """
    from fedpipe.adapters.http_exchange import HttpFileExchange

    base = check_server_url(server_url)
    verify: str | bool = str(ca_file) if ca_file is not None else True
    headers = {"Authorization": f"Bearer {token}"}
    try:
        board = BoardClient(base, token=token, timeout=timeout, verify=verify)
        exchange = HttpFileExchange(f"{base}/upload", headers=headers, verify=verify, retries=2)
    except OSError as err:  # an unreadable CA file (ssl.SSLError is an OSError too)
        raise ResearcherError(f"cannot use the CA file {ca_file}: {err.strerror or err}") from err
    federation = Federation(server_url=base, board=board, exchange=exchange)
    try:
        federation.nodes()
    except ResearcherError:
        federation.close()
        raise
    return federation


def select_nodes(
    federation: Federation,
    wanted: Sequence[str] | None,
    *,
    wait: float = 30.0,
    warn: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, ...]:
    """The nodes to train on: ``wanted`` (in order), or every node the server knows when None.

    A node is known once it has connected to the server. Waits up to ``wait`` seconds for the
    wanted nodes (for "all": for a first node) to connect; ResearcherError (exit code 2) naming
    the missing ones and those the server knows. ``warn`` hears of nodes that have not polled
    for a while (they may be stopped: their tasks wait in their queues).
    """
    deadline = time.monotonic() + wait
    while True:
        known = federation.nodes()
        missing = [] if wanted is None else [n for n in wanted if n not in known]
        if (wanted is None and known) or (wanted is not None and not missing):
            break
        if time.monotonic() >= deadline:
            if wanted is None:
                raise ResearcherError(
                    f"no node has connected to the server at {federation.server_url} "
                    "(start one with `fedpipe node`)"
                )
            others = ", ".join(sorted(known)) or "none"
            raise ResearcherError(
                f"unknown node{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                f"the server knows {others} (a node is known once it has connected)"
            )
        sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    chosen = tuple(sorted(known)) if wanted is None else tuple(wanted)
    now = time.time()
    for node in chosen:
        age = now - known[node]
        if warn is not None and age > STALE_AFTER_S:
            warn(f"{node} last polled the server {age:.0f} s ago; it may be stopped")
    return chosen


def initial_params_from_plan(
    plan_file: Path | str, plan_class: str, model_args: Mapping[str, Any], *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The initial global model: ``plan_class`` of ``plan_file`` built here with ``model_args``.

    The plan is loaded as the nodes load it (``ModulePlanLoader``), seeded with ``seed``, and its
    parameters are read as a node would send them (``after_training_params``). ResearcherError
    (exit code 2) when the file cannot be loaded or the plan cannot build its model.
    """
    from fedpipe.adapters.plan_loader import ModulePlanLoader

    loaded = ModulePlanLoader().load(Path(plan_file), plan_class)
    if isinstance(loaded, Failure):
        raise ResearcherError(f"{plan_file}: {loaded.failure().public}")
    plan = loaded.unwrap()
    try:
        plan.post_init(
            model_args=thaw(model_args), training_args=TrainingArgs(random_seed=seed), aggregator_args={}
        )
        params = plan.after_training_params(flatten=False)
    except Exception as err:  # the researcher's own plan code: any exception is its failure
        raise ResearcherError(
            f"{plan_file}: {plan_class} could not build its model ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(params, Mapping) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        raise ResearcherError(f"{plan_file}: {plan_class} does not give its parameters as tensors")
    return {str(k): v.detach().clone() for k, v in params.items()}


def build_strategy(
    config: ExperimentConfig,
    initial: Mapping[str, torch.Tensor],
    node_ids: Sequence[str],
    job_id: str,
) -> tuple[Strategy, Callable[[int], Mapping[str, Any]] | None]:
    """The aggregation strategy of ``config`` and, under secure aggregation, the requests' secagg fields.

    FedProx aggregates as FedAvg (its ``mu`` travels in the training arguments); SCAFFOLD starts
    from a zero control variate; LOM secure aggregation wraps either.
    """
    inner: Strategy
    if config.strategy.name == "scaffold":
        start = ScaffoldStrategy.starting_from(initial, len(node_ids))
        inner = ScaffoldStrategy(
            n_nodes=start.n_nodes, control=start.control, server_lr=config.strategy.server_lr
        )
    else:
        inner = FedAvg()
    if not config.secure_aggregation.enabled:
        return inner, None
    from fedpipe.researcher.secure import FedpipeLomAggregation

    secagg = FedpipeLomAggregation(node_ids=tuple(node_ids), secagg_id=f"lom-{job_id}")
    return secagg.wrap(inner, initial), secagg.request_fields


def run_experiment(
    config: ExperimentConfig,
    federation: Federation,
    *,
    workdir: Path | str,
    plan_file: Path | str | None = None,
    initial_params: Mapping[str, torch.Tensor] | None = None,
    wait_for_nodes: float = 30.0,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run ``config`` on the federation's nodes: ``config.rounds`` training rounds, then a final validation.

    ``plan_file`` (default: the configuration's) is uploaded for the nodes, whose owners must have
    approved it; ``initial_params`` default to the plan's own model (``initial_params_from_plan``).
    ``workdir`` holds the researcher's scratch files. ``on_round`` hears of each finished round,
    ``on_progress`` of each node's progress, ``warn`` of nodes that look stopped. Every expected
    failure is a ResearcherError (see the module's text for its exit codes); nothing is posted
    before the nodes, the plan and the initial model are known to be usable.
    """
    path = plan_file_of(config, plan_file)
    node_ids = select_nodes(federation, config.nodes, wait=wait_for_nodes, warn=warn)
    initial = (
        dict(initial_params)
        if initial_params is not None
        else initial_params_from_plan(path, config.plan_class, config.model_args, seed=config.seed)
    )
    job_id = config.job_id or f"job-{uuid.uuid4().hex[:12]}"
    strategy, secagg_fields = build_strategy(config, initial, node_ids, job_id)
    scratch = Path(workdir)
    scratch.mkdir(parents=True, exist_ok=True)
    uploaded = federation.exchange.upload(path)
    if isinstance(uploaded, Failure):
        raise ResearcherError(f"cannot upload the training plan: {uploaded.failure().public}", 1)
    experiment = experiment_of(
        config,
        board=federation.board,
        exchange=federation.exchange,
        node_ids=node_ids,
        job_id=job_id,
        plan_source_url=uploaded.unwrap(),
        initial_params=initial,
        strategy=strategy,
        workdir=scratch,
        secagg_fields=secagg_fields,
        on_round=on_round,
        on_progress=on_progress,
    )
    try:
        return experiment.run(config.rounds)
    except ExperimentStopped as err:
        raise ResearcherError(_numbered(str(err)), 1) from err
    except BoardError as err:
        raise ResearcherError(
            f"the experiment stopped: {_board_problem(err, federation.server_url)}", 1
        ) from err


def _numbered(text: str) -> str:
    """ExperimentStopped speaks of the wire's 0-based round index; users read rounds from 1.

    >>> _numbered("round 0: no node succeeded")
    'round 1: no node succeeded'
    """
    head, sep, rest = text.partition(": ")
    word, _, index = head.partition(" ")
    if word == "round" and index.isdigit() and sep:
        return f"round {int(index) + 1}: {rest}"
    return text
