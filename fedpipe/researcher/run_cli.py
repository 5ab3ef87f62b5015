"""``fedpipe run``: the researcher's command, an experiment from a TOML file against a running ``fedpipe serve``.

Exit status: 0 when the run ends with a validated final model; 2 for a mistake found before any
task is posted (options, configuration, token or plan file, server unreachable or refusing the
token, unknown nodes); 1 when the experiment fails while it runs, or no node validates the final
model; 130 when interrupted (Ctrl-C). Errors are one line on stderr, ``error: ...``; nothing is
written before the run starts, and the outputs only once it has ended.
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpipe.argtypes import seconds
from fedpipe.researcher.command import add_experiment_options, error, note, plan_path, report

__all__ = ["add_run_parser", "main", "run_command"]

DESCRIPTION = """\
Run a federated experiment on the nodes connected to a running `fedpipe serve`: each round
sends the global model to the nodes, waits for their updates and aggregates them; a last round
validates the final model. Progress goes to stderr, a table per round to stdout; at the end the
final model (model.mpk, fedpipe's codec, and model.safetensors), metrics.csv and accuracy.png
are written to --output. The configuration file (TOML) gives rounds, nodes ("all" or a list),
dataset, plan_class, [strategy] (fedavg, fedprox with mu, scaffold with server_lr),
[secure_aggregation], [training_args] and [model_args]; see examples/experiment.toml.
Exit status: 0 done, 2 a mistake found before the run started, 1 the run failed."""


def _say(text: str) -> None:
    print(text, flush=True)


def add_run_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``run`` sub-command on ``sub`` (the ``fedpipe`` parser's sub-parsers); return it.

    Its ``run`` default is ``run_command``: arguments -> exit status.
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="researcher: run an experiment (a TOML config and a plan) on the nodes of a running server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    parser.set_defaults(run=run_command)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", required=True, metavar="URL", help="the server's URL, http(s)://host:port (required)"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="file holding a researcher token (`fedpipe tokens issue --researcher NAME --out FILE`; required)",
    )
    add_experiment_options(
        parser,
        output="fedpipe-output",
        plan_help="the training plan source the node owners approved",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="CA certificate (PEM) that signed an HTTPS server (default: the system's CAs)",
    )
    parser.add_argument(
        "--wait-nodes",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help='how long to wait for the configured nodes (for "all": a first node) to connect (default: 30)',
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``fedpipe run`` with parsed arguments; return the exit status (see the module's text)."""
    from fedpipe.bootstrap import NodeAdminError, read_token_file
    from fedpipe.researcher.config import ConfigError, load_config
    from fedpipe.researcher.console import ProgressPrinter, RoundTable
    from fedpipe.researcher.federation import ResearcherError, check_server_url, connect, run_experiment

    try:
        config = load_config(args.config)
        check_server_url(args.server)
        token = read_token_file(args.token_file)
        plan = plan_path(args, config)
    except (ConfigError, ResearcherError, NodeAdminError) as err:
        return error(str(err), 2)
    table = RoundTable(config.rounds, config.training_args)
    say = (lambda text: None) if args.quiet else _say
    try:
        with (
            connect(args.server, token, ca_file=args.ca_file) as federation,
            tempfile.TemporaryDirectory(prefix="fedpipe-run-") as scratch,
        ):
            progress = ProgressPrinter(config.rounds, (lambda text: None) if args.quiet else note)
            started = time.monotonic()
            result = run_experiment(
                config,
                federation,
                workdir=Path(scratch),
                plan_file=plan,
                wait_for_nodes=args.wait_nodes,
                on_round=lambda record: say(table(record)),
                on_progress=progress,
                warn=lambda text: note(f"warning: {text}"),
            )
            elapsed = time.monotonic() - started
    except ResearcherError as err:
        return error(str(err), err.exit_code)
    except KeyboardInterrupt:
        return error("interrupted: the nodes finish the tasks already sent; nothing was saved", 130)
    return report(
        result,
        config,
        args.output,
        title=f"fedpipe run: {config.strategy.label}",
        headline=f"experiment finished in {elapsed:.1f} s: {config.rounds} rounds, {config.strategy.label}",
    )


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of the ``run`` arguments (``python -m fedpipe.researcher.run_cli``)."""
    parser = argparse.ArgumentParser(
        prog="fedpipe run", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fedpipe.researcher.run_cli`` (the same command as ``fedpipe run``)."""
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
