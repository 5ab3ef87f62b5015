"""``fedpipe simulate``: an experiment of ``fedpipe run`` on N virtual nodes of this machine.

Exit status: 0 when the run ends with a validated final model; 2 for a mistake found before the
first round (options, configuration, plan file, partition); 1 when the simulation fails while it
runs; 130 when interrupted. Errors are one line on stderr, ``error: ...``; one progress line per
round goes to stderr, and the outputs of ``fedpipe run`` to --output at the end.
"""

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpipe.argtypes import non_negative_int, positive_float, positive_int
from fedpipe.researcher.command import add_experiment_options, error, note, plan_path, report

__all__ = ["add_simulate_parser", "main", "simulate_command"]

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
    if args.engine != "ray" and (args.address is not None or args.cpus is not None):
        return error("--address and --cpus are options of --engine ray", 2)
    name, percent = metric_label(config.training_args)

    def progress(record: RoundRecord) -> None:
        if args.quiet:
            return
        ok = sum(r.success for r in record.results)
        head = f"round {record.number}/{config.rounds}" if record.training else "final validation"
        note(
            f"{head}: {ok}/{len(record.results)} nodes ok, global {name} "
            f"{metric_text(record.weighted('before'), percent)}"
            f" ({record.seconds:.2f} s)"
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
            workdir=args.workdir,
            engine=args.engine,
            engine_options=EngineOptions(address=args.address, num_cpus=args.cpus),
            plan_file=plan,
            on_round=progress,
        )
    except ResearcherError as err:
        return error(str(err), err.exit_code)
    except KeyboardInterrupt:
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
