"""What ``fedpipe run`` prints: a progress line per round and node, a table per round, the final figure.

Plain text, no terminal control: it reads the same in a terminal, a log file and a notebook.
Rounds are numbered from 1.
"""

from collections.abc import Callable, Mapping
from typing import Any

from fedpipe.args import parse_metric
from fedpipe.researcher.experiment import ProgressEvent, RoundRecord

__all__ = ["ProgressPrinter", "RoundTable", "metric_label", "metric_text", "seconds"]


def seconds(value: float) -> str:
    """A duration as a person reads it.

    >>> seconds(0.0042), seconds(0.213), seconds(3.42), seconds(75.0)
    ('4 ms', '0.21 s', '3.4 s', '75 s')
    """
    if value < 0.1:
        return f"{1000 * value:.0f} ms"
    if value < 1:
        return f"{value:.2f} s"
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def bar(done: int, total: int, width: int = 20) -> str:
    """A text progress bar.

    >>> bar(1, 2, width=10)
    '[#####-----] 1/2'
    """
    filled = round(width * done / max(total, 1))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done}/{total}"


def metric_label(training_args: Mapping[str, Any]) -> tuple[str, bool]:
    """The validation metric's name and whether it reads as a percentage (a classification metric).

    >>> metric_label({"test_metric": "accuracy"}), metric_label({"test_metric": "MSE"})
    (('accuracy', True), ('mean_square_error', False))
    """
    metric = parse_metric(training_args.get("test_metric"))
    if metric is None:
        return "metric", False
    return metric.value.lower(), metric.is_classification


class ProgressPrinter:
    """Prints one line per node as it finishes a round: ``round 2/5 [#####-----] 1/2 node-1 training… done (3.1 s)``.

    ``rounds`` is the number of training rounds; ``write`` takes each line (e.g. to stderr). The
    bar counts the nodes the round was sent to (each round's ``sent`` events come first).
    """

    def __init__(self, rounds: int, write: Callable[[str], None]) -> None:
        self.rounds = rounds
        self.write = write
        self._sent: dict[tuple[int, bool], int] = {}
        self._done: dict[tuple[int, bool], int] = {}

    def __call__(self, event: ProgressEvent) -> None:
        """Take one progress event."""
        key = (event.number, event.training)
        title = f"round {event.number}/{self.rounds}" if event.training else "final"
        doing = "training" if event.training else "validating the final model"
        if event.status == "sent":
            self._sent[key] = self._sent.get(key, 0) + 1
            return
        done = self._done[key] = self._done.get(key, 0) + 1
        outcome = {"done": "done", "timeout": "no reply before the round deadline"}.get(
            event.status, f"failed: {event.message}"
        )
        self.write(
            f"{title} {bar(done, max(done, self._sent.get(key, 0)))} {event.node_id} {doing}… {outcome} ({seconds(event.seconds)})"
        )


def metric_text(value: float | None, percent: bool) -> str:
    """A metric as the tables show it: a percentage, or four significant digits; ``-`` when absent."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class RoundTable:
    """Formats a finished round as a table: per node samples, loss and metrics, then the aggregate row."""

    def __init__(self, rounds: int, training_args: Mapping[str, Any]) -> None:
        self.rounds = rounds
        self.metric, self.percent = metric_label(training_args)

    def __call__(self, record: RoundRecord) -> str:
        """The table of ``record`` (several lines, no trailing newline)."""
        if record.training:
            head = f"round {record.number}/{self.rounds} ({seconds(record.seconds)})"
        else:
            head = f"final: validation of the global model after round {record.number} ({seconds(record.seconds)})"
        local = f" {self.metric + ' (local)':>20}" if record.training else ""
        columns = f"{'samples':>7} {'loss':>8}" if record.training else f"{'':>7} {'':>8}"
        lines = [head, f"  {'node':<16} {columns} {self.metric + ' (global)':>20}{local}"]
        for result in record.results:
            m = record.metrics.get(result.node_id)
            if not result.success:
                lines.append(f"  {result.node_id:<16} FAILED: {result.msg}")
                continue
            samples = str(result.sample_size) if record.training else ""
            loss = _loss(m.train_loss if m else None) if record.training else ""
            lines.append(
                f"  {result.node_id:<16} {samples:>7} {loss:>8} "
                f"{metric_text(m.before if m else None, self.percent):>20} "
                f"{metric_text(m.after if m and record.training else None, self.percent) if record.training else '':>20}"
            )
        ok = [r for r in record.results if r.success]
        losses = [
            (m.train_loss, r.sample_size or 1)
            for r in ok
            if (m := record.metrics.get(r.node_id)) is not None and m.train_loss is not None
        ]
        mean_loss = sum(v * w for v, w in losses) / sum(w for _, w in losses) if losses else None
        lines.append(
            f"  {'aggregate':<16} {sum(r.sample_size for r in ok) if record.training else '':>7} "
            f"{_loss(mean_loss) if record.training else '':>8} "
            f"{metric_text(record.weighted('before'), self.percent):>20} "
            f"{metric_text(record.weighted('after'), self.percent) if record.training else '':>20}"
        )
        return "\n".join(line.rstrip() for line in lines)
