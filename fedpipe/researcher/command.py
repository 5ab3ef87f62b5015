"""What ``fedpipe run`` and ``fedpipe simulate`` share: their common options, checks and final report.

Both read a TOML experiment configuration and a plan file, refuse a mistake in one line before
anything starts (exit 2), and end by saving the model, metrics and plot with ``save_outputs`` and
printing where they went and the final metric.
"""

import argparse
import sys
from pathlib import Path

from fedpipe.researcher.config import ExperimentConfig
from fedpipe.researcher.experiment import ExperimentResult

__all__ = ["add_experiment_options", "error", "note", "plan_path", "report"]


def note(text: str) -> None:
    """A progress line, on stderr."""
    print(text, file=sys.stderr, flush=True)


def error(message: str, code: int) -> int:
    """Print ``error: <message>`` on stderr; return ``code``, the exit status."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def add_experiment_options(parser: argparse.ArgumentParser, *, output: str, plan_help: str) -> None:
    """``--config``, ``--plan``, ``--output`` (default ``output``) and ``--quiet``."""
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
        help=f"{plan_help} (default: plan_file in the configuration)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(output),
        metavar="DIR",
        help=f"where the model, metrics.csv and accuracy.png go (default: {output})",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only errors and the final lines (default: off)"
    )


def plan_path(args: argparse.Namespace, config: ExperimentConfig) -> Path:
    """The plan file (``--plan``, else the configuration's), once ``--output`` is known to be usable;
    ResearcherError (exit 2) otherwise."""
    from fedpipe.researcher.federation import ResearcherError, plan_file_of

    plan = plan_file_of(config, args.plan)
    if args.output.exists() and not args.output.is_dir():
        raise ResearcherError(f"--output {args.output} exists and is not a folder")
    return plan


def report(
    result: ExperimentResult, config: ExperimentConfig, output: Path, *, title: str, headline: str
) -> int:
    """Save ``result``'s outputs in ``output`` and print them and the final metric; the exit status.

    0 when a final metric exists; 1 when the outputs cannot be written or no node validated the
    final model.
    """
    from fedpipe.researcher.console import metric_label, metric_text
    from fedpipe.researcher.outputs import save_outputs

    name, percent = metric_label(config.training_args)
    try:
        outputs = save_outputs(result, output, title=title, metric=name, percent=percent)
    except OSError as err:
        return error(f"cannot write the outputs to {output}: {err.strerror or err}", 1)
    print(headline)
    print(f"model: {outputs.model_codec} and {outputs.model_safetensors}")
    print(f"metrics: {outputs.metrics}")
    print(
        f"plot: {outputs.plot}" if outputs.plot is not None else "plot: skipped (matplotlib is not installed)"
    )
    if result.final_metric is None:
        return error("no node validated the final model: its metric is unavailable", 1)
    print(
        f"final global {name}: {metric_text(result.final_metric, percent)} (weighted over the nodes' test subsets)"
    )
    sys.stdout.flush()
    return 0
