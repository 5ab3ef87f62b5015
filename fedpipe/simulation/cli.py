"""``fedpipe simulate``: an experiment of ``fedpipe run`` on N virtual nodes of this machine.

Exit status: 0 when the run ends with a validated final model; 2 for a mistake found before the
first round (options, configuration, plan file, partition); 1 when the simulation fails while it
runs; 130 when interrupted. Errors are one line on stderr, ``error: ...``. Progress goes to
stderr (``RoundProgress``): on a terminal one bar per round, redrawn in place as nodes finish;
elsewhere a line at a quarter, half and three quarters of a round's nodes; then each round's
summary line. The outputs of ``fedpipe run`` go to --output at the end.
"""

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fedpipe.argtypes import non_negative_int, positive_float, positive_int
from fedpipe.researcher.command import add_experiment_options, error, plan_path, report

if TYPE_CHECKING:
    from fedpipe.researcher.experiment import ProgressEvent, RoundRecord

__all__ = ["RoundProgress", "add_simulate_parser", "main", "simulate_command"]

DESCRIPTION = """\
Simulate a federated experiment on N virtual nodes of this machine. Each node has its own node
root (settings, SQLite database with its dataset, plan approval and node state), made when the
node is first sampled, holding a partition of the shipped breast-cancer data; each runs the real
node round, over an in-memory exchange. The configuration is that of `fedpipe run` (rounds,
dataset, plan_class, [strategy], [training_args], [model_args]; nodes must be "all"). Each
training round samples --per-round of the --nodes (seeded with --seed, which also draws the
partition); the final validation runs on every node. The final model (model.mpk and
model.safetensors), metrics.csv and accuracy.png are written to --output.
Exit status: 0 done, 2 a mistake found before the first round, 1 the simulation failed."""


def add_simulate_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``simulate`` sub-command on ``sub`` (the ``fedpipe`` parser's sub-parsers); return it.

    Its ``run`` default is ``simulate_command``: arguments -> exit status.
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        "simulate",
        help="researcher: simulate an experiment on N virtual nodes running the real node round",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    parser.set_defaults(run=simulate_command)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from fedpipe.simulation.engine import ENGINES
    from fedpipe.simulation.partition import SCHEMES

    add_experiment_options(parser, output="fedpipe-simulation", plan_help="the training plan source")
    parser.add_argument(
        "--nodes", type=positive_int, required=True, metavar="N", help="how many virtual nodes (required)"
    )
    parser.add_argument(
        "--per-round",
        type=positive_int,
        default=None,
        metavar="K",
        help="nodes sampled per training round (default: every node)",
    )
    parser.add_argument(
        "--partition",
        choices=SCHEMES,
        default="iid",
        help="how the data is split among the nodes (default: iid)",
    )
    parser.add_argument(
        "--alpha",
        type=positive_float,
        default=0.5,
        metavar="A",
        help="Dirichlet concentration for --partition dirichlet (default: 0.5)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="seeds the partition and the sampling (default: 0)",
    )
    parser.add_argument(
        "--rows",
        type=positive_int,
        default=None,
        metavar="R",
        help="grow the 569 shipped rows to R with seeded, jittered copies of them, for more nodes than"
        " rows (default: the shipped rows only)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the virtual nodes' roots are kept (default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="inline",
        help="what runs the nodes' rounds: inline, in this process, or ray, on a pool of Ray actors"
        " (needs the ray extra; default: inline)",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="with --engine ray: the Ray cluster to join (default: start a local Ray, stopped at the end)",
    )
    parser.add_argument(
        "--cpus",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --engine ray: the CPUs of the local Ray, one actor each (default: all of this machine);"
        " with --address, the number of actors (default: the cluster's CPUs)",
    )
    parser.add_argument(
        "--gpus",
        type=positive_int,
        default=None,
        metavar="G",
        help="with --engine ray and no --address: the GPUs of the local Ray (default: those Ray finds)",
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=positive_float,
        default=None,
        metavar="F",
        help="with --engine ray: the share of a GPU each actor holds, a fraction up to 1 or a whole number"
        " (0.25: four actors per GPU; the pool is no larger than the GPUs hold); its nodes may then"
        " train on it when the training args ask for use_gpu (default: no GPU)",
    )
    parser.add_argument(
        "--chunk",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --engine ray: the most tasks one actor call runs (default: a round's share of an"
        " actor in 8 calls, at most 32 tasks each)",
    )


_MILESTONES = (0.25, 0.5, 0.75)
"""Off a terminal, a round's progress is written when this share of its nodes has finished."""

_REDRAW_S = 0.1
"""On a terminal, the bar is redrawn at most this often (and when its round ends)."""


class RoundProgress:
    """A round's progress as its nodes finish, then its summary line, on ``stream``.

    Feed it ``ProgressEvent``s (``event``) and each finished ``RoundRecord`` (``round``);
    ``summary`` gives a record's line. With ``live`` (a terminal) one bar per round is redrawn in
    place, ``round 2/5  [########------]  612/1000 nodes  3 failed  1.4 s``, and replaced by the
    summary line at the end; without, the same line is written at most once per milestone (a
    quarter, half and three quarters of the round's nodes), never once per node.

    >>> import io
    >>> from fedpipe.researcher.experiment import ProgressEvent
    >>> out = io.StringIO()
    >>> show = RoundProgress(3, out, live=False, summary=lambda record: "")
    >>> for n in range(8):
    ...     show.event(ProgressEvent(number=1, training=True, node_id=f"n{n}", status="sent"))
    >>> for n in range(8):
    ...     status = "timeout" if n == 7 else "done"
    ...     show.event(ProgressEvent(number=1, training=True, node_id=f"n{n}", status=status, seconds=0.5))
    >>> print(out.getvalue(), end="")
    round 1/3  [#####---------------]  2/8 nodes  0 failed  0.50 s
    round 1/3  [##########----------]  4/8 nodes  0 failed  0.50 s
    round 1/3  [###############-----]  6/8 nodes  0 failed  0.50 s
    """

    def __init__(
        self, rounds: int, stream: TextIO, *, live: bool, summary: "Callable[[RoundRecord], str]"
    ) -> None:
        self.rounds = rounds
        self.stream = stream
        self.live = live
        self.summary = summary
        self._key: tuple[int, bool] | None = None
        self._sent = self._finished = self._failed = 0
        self._seconds = 0.0
        self._shown = 0  # off a terminal: the milestones written; on one: when the bar was last drawn
        self._drawn = 0.0

    def _head(self, number: int, training: bool) -> str:
        return f"round {number}/{self.rounds}" if training else "final validation"

    def event(self, event: "ProgressEvent") -> None:
        """Take one node's progress."""
        key = (event.number, event.training)
        if key != self._key:
            self._key = key
            self._sent = self._finished = self._failed = self._shown = 0
            self._drawn = 0.0
        if event.status == "sent":
            self._sent += 1
            return
        self._finished += 1
        self._failed += event.status != "done"
        self._seconds = event.seconds
        total = max(self._sent, self._finished)
        if self.live:
            now = time.monotonic()
            if now - self._drawn >= _REDRAW_S or self._finished == total:
                self._drawn = now
                self.stream.write(f"\r{self._line(total)}\x1b[K")
                self.stream.flush()
            return
        reached = sum(self._finished >= share * total for share in _MILESTONES)
        if reached > self._shown and self._finished < total:
            self._shown = reached
            self.stream.write(self._line(total) + "\n")
            self.stream.flush()

    def _line(self, total: int) -> str:
        from fedpipe.researcher.console import seconds

        assert self._key is not None
        width = 20
        filled = round(width * self._finished / max(total, 1))
        return (
            f"{self._head(*self._key)}  [{'#' * filled}{'-' * (width - filled)}]  "
            f"{self._finished}/{total} nodes  {self._failed} failed  {seconds(self._seconds)}"
        )

    def clear(self) -> None:
        """Erase a bar left drawn (on a terminal), so that an error line starts a line of its own."""
        if self.live and self._key is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self._key = None

    def round(self, record: "RoundRecord") -> None:
        """End ``record``'s round: its summary line (in place of its bar on a terminal)."""
        start = "\r\x1b[K" if self.live and self._key is not None else ""
        self.stream.write(f"{start}{self.summary(record)}\n")
        self.stream.flush()
        self._key = None


def simulate_command(args: argparse.Namespace) -> int:
    """Run ``fedpipe simulate`` with parsed arguments; return the exit status (see the module's text)."""
    from fedpipe.researcher.config import ConfigError, load_config
    from fedpipe.researcher.console import metric_label, metric_text
    from fedpipe.researcher.experiment import RoundRecord
    from fedpipe.researcher.federation import ResearcherError
    from fedpipe.simulation.api import simulate
    from fedpipe.simulation.engine import EngineOptions

    try:
        config = load_config(args.config)
        plan = plan_path(args, config)
    except (ConfigError, ResearcherError) as err:
        return error(str(err), 2)
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        return error(f"--workdir {args.workdir} exists and is not a folder", 2)
    ray_only = {"--address": args.address, "--cpus": args.cpus, "--gpus": args.gpus}
    ray_only |= {"--gpus-per-actor": args.gpus_per_actor, "--chunk": args.chunk}
    if args.engine != "ray" and any(v is not None for v in ray_only.values()):
        given = [flag for flag, value in ray_only.items() if value is not None]
        return error(
            f"{' and '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of --engine ray", 2
        )
    name, percent = metric_label(config.training_args)

    def summary(record: RoundRecord) -> str:
        ok = sum(r.success for r in record.results)
        late = sum(r.msg == "no reply before the round deadline" for r in record.results)
        head = f"round {record.number}/{config.rounds}" if record.training else "final validation"
        return (
            f"{head}: {ok}/{len(record.results)} nodes ok"
            + (f" ({late} no reply before the round deadline)" if late else "")
            + f", global {name} {metric_text(record.weighted('before'), percent)}"
            f" ({record.seconds:.2f} s)"
        )

    shown = (
        None
        if args.quiet
        else RoundProgress(config.rounds, sys.stderr, live=sys.stderr.isatty(), summary=summary)
    )

    # the virtual nodes' own log lines would repeat, per node, what the round lines report
    node_log = logging.getLogger("fedpipe.node")
    node_log.addHandler(logging.NullHandler())
    node_log.propagate = False
    started = time.monotonic()
    try:
        result = simulate(
            config,
            nodes=args.nodes,
            per_round=args.per_round,
            partition=args.partition,
            alpha=args.alpha,
            seed=args.seed,
            rows=args.rows,
            workdir=args.workdir,
            engine=args.engine,
            engine_options=EngineOptions(
                address=args.address,
                num_cpus=args.cpus,
                gpus=args.gpus,
                gpus_per_actor=args.gpus_per_actor,
                chunk=args.chunk,
            ),
            plan_file=plan,
            on_round=None if shown is None else shown.round,
            on_progress=None if shown is None else shown.event,
        )
    except ResearcherError as err:
        if shown is not None:
            shown.clear()
        return error(str(err), err.exit_code)
    except KeyboardInterrupt:
        if shown is not None:
            shown.clear()
        return error("interrupted: nothing was saved", 130)
    elapsed = time.monotonic() - started
    return report(
        result,
        config,
        args.output,
        title=f"fedpipe simulate: {config.strategy.label}, {args.nodes} nodes",
        headline=f"simulation finished in {elapsed:.1f} s: {config.rounds} rounds on {args.nodes} virtual nodes, "
        f"{config.strategy.label}",
    )


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of the ``simulate`` arguments (``python -m fedpipe.simulation.cli``)."""
    parser = argparse.ArgumentParser(
        prog="fedpipe simulate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fedpipe.simulation.cli`` (the same command as ``fedpipe simulate``)."""
    return simulate_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
