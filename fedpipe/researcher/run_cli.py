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


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, not {text}")
    return value


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
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the experiment configuration, TOML (required)",
    )
    parser.add_argument(
        "--plan",
        type=Path,
        default=None,
        metavar="FILE",
        help="the training plan source the node owners approved (default: plan_file in the configuration)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("fedpipe-output"),
        metavar="DIR",
        help="where the model, metrics.csv and accuracy.png go (default: fedpipe-output)",
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
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help='how long to wait for the configured nodes (for "all": a first node) to connect (default: 30)',
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only errors and the final lines (default: off)"
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``fedpipe run`` with parsed arguments; return the exit status (see the module's text)."""
    from fedpipe.bootstrap import NodeAdminError, read_token_file
    from fedpipe.researcher.config import ConfigError, load_config
    from fedpipe.researcher.console import ProgressPrinter, RoundTable, metric_label
    from fedpipe.researcher.federation import ResearcherError, check_server_url, connect, run_experiment
    from fedpipe.researcher.outputs import save_outputs

    try:
        config = load_config(args.config)
        check_server_url(args.server)
        token = read_token_file(args.token_file)
    except (ConfigError, ResearcherError) as err:
        return _error(str(err), 2)
    except NodeAdminError as err:
        return _error(str(err), 2)
    plan = args.plan if args.plan is not None else config.plan_file
    if plan is None:
        return _error(
            f"{args.config}: no training plan: give --plan FILE or plan_file in the configuration", 2
        )
    if not Path(plan).is_file():
        return _error(f"no training plan file at {plan}", 2)
    if args.output.exists() and not args.output.is_dir():
        return _error(f"--output {args.output} exists and is not a folder", 2)
    table = RoundTable(config.rounds, config.training_args)
    say = (lambda text: None) if args.quiet else _say
    try:
        with (
            connect(args.server, token, ca_file=args.ca_file) as federation,
            tempfile.TemporaryDirectory(prefix="fedpipe-run-") as scratch,
        ):
            progress = ProgressPrinter(config.rounds, (lambda text: None) if args.quiet else _note)
            started = time.monotonic()
            result = run_experiment(
                config,
                federation,
                workdir=Path(scratch),
                plan_file=plan,
                wait_for_nodes=args.wait_nodes,
                on_round=lambda record: say(table(record)),
                on_progress=progress,
                warn=lambda text: _note(f"warning: {text}"),
            )
            elapsed = time.monotonic() - started
    except ResearcherError as err:
        return _error(str(err), err.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted: the nodes finish the tasks already sent; nothing was saved", 130)
    name, percent = metric_label(config.training_args)
    try:
        outputs = save_outputs(
            result,
            args.output,
            title=f"fedpipe run: {config.strategy.label}",
            metric=name,
            percent=percent,
        )
    except OSError as err:
        return _error(f"cannot write the outputs to {args.output}: {err.strerror or err}", 1)
    _say(f"experiment finished in {elapsed:.1f} s: {config.rounds} rounds, {config.strategy.label}")
    _say(f"model: {outputs.model_codec} and {outputs.model_safetensors}")
    _say(f"metrics: {outputs.metrics}")
    _say(
        f"plot: {outputs.plot}" if outputs.plot is not None else "plot: skipped (matplotlib is not installed)"
    )
    final = result.final_metric
    if final is None:
        return _error("no node validated the final model: its metric is unavailable", 1)
    shown = f"{100 * final:.1f}%" if percent else f"{final:.4g}"
    _say(f"final global {name}: {shown} (weighted over the nodes' test subsets)")
    return 0


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
