"""What an experiment leaves behind: the final model (codec and safetensors), the metrics CSV and the plot.

Rounds are numbered from 1 wherever a user reads them; the validation of the final global model
(after the last round) is the ``final`` phase of the last round's number.

The safetensors file is written and read here, with no dependency: an 8-byte little-endian header
length, a JSON header (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` plus an
optional ``"__metadata__"`` of strings), padded with spaces to 8 bytes, then the tensors' raw
little-endian bytes back to back in header order. Reading checks every rule of the format (known
dtype, whole shapes, offsets that tile the data exactly), so a damaged file is a
``SafetensorsError``, never a wrong tensor.
"""

import csv
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import frozen
from returns.result import Failure

from fedpipe.codec import dump_file, load_file
from fedpipe.researcher.experiment import ExperimentResult, RoundRecord

__all__ = [
    "METRICS_COLUMNS",
    "SAFETENSORS_DTYPES",
    "ExperimentOutputs",
    "SafetensorsError",
    "load_model",
    "load_safetensors",
    "metrics_rows",
    "plot_accuracy",
    "save_model",
    "save_outputs",
    "save_safetensors",
    "write_metrics_csv",
]

SAFETENSORS_DTYPES: Mapping[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""The safetensors dtype names this module writes and reads, and their torch dtypes."""

_NAME_OF = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own bound on the header


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file (the text says which rule it breaks)."""


def _raw(tensor: torch.Tensor) -> bytes:
    """A tensor's elements as little-endian bytes in C order."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().astype("<i2", copy=False).tobytes()
    array = flat.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path | str, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` in the safetensors format; return the path.

    ValueError for a dtype outside ``SAFETENSORS_DTYPES``, a name ``__metadata__`` or metadata
    that is not strings; the file is written whole or not at all (a temporary sibling renamed).
    """
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        if name == "__metadata__":
            raise ValueError("a tensor cannot be named __metadata__")
        if tensor.dtype not in _NAME_OF:
            raise ValueError(f"safetensors has no dtype for {tensor.dtype} (tensor {name!r})")
        blob = _raw(tensor)
        header[name] = {
            "dtype": _NAME_OF[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for blob in blobs:
            fh.write(blob)
    partial.replace(target)
    return target


def _entry(name: str, entry: object, data_size: int) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"tensor {name!r}: an entry has exactly dtype, shape and data_offsets")
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise SafetensorsError(f"tensor {name!r}: unsupported dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise SafetensorsError(f"tensor {name!r}: the shape is a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise SafetensorsError(f"tensor {name!r}: data_offsets lie outside the data")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise SafetensorsError(f"tensor {name!r}: its bytes do not match its shape and dtype")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _tensor(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bfloat16:
        bits = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16).reshape(shape)
    if dtype == torch.bool:
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise SafetensorsError("a boolean tensor holds a byte other than 0 or 1")
        return torch.from_numpy(raw.astype(np.bool_)).reshape(shape)
    numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype.newbyteorder("<")
    array = np.frombuffer(data, dtype=numpy_dtype).astype(numpy_dtype.newbyteorder("="))
    return torch.from_numpy(array.copy()).reshape(shape)


def load_safetensors(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: its tensors (in file order) and its metadata.

    ``SafetensorsError`` for a truncated file, a header that is not a JSON object of valid
    entries, offsets that overlap, leave gaps or do not end the file, or a byte of a boolean
    that is neither 0 nor 1; OSError when the file cannot be read.
    """
    blob = Path(path).read_bytes()
    if len(blob) < 8:
        raise SafetensorsError("the file is shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(_MAX_HEADER, len(blob) - 8):
        raise SafetensorsError("the header length exceeds the file")
    try:
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise SafetensorsError(f"the header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    data = blob[8 + size :]
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("__metadata__ is not a map of strings")
    entries = [(name, *_entry(name, entry, len(data))) for name, entry in header.items()]
    end = 0
    for name, _, _, begin, stop in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != end:
            raise SafetensorsError(f"tensor {name!r}: the data offsets overlap or leave a gap")
        end = stop
    if end != len(data):
        raise SafetensorsError("the data does not end where the last tensor does")
    tensors = {name: _tensor(data[begin:stop], dtype, shape) for name, dtype, shape, begin, stop in entries}
    return tensors, dict(metadata)


def _tensors(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        out[name] = tensor.detach().cpu()
    return out


def save_model(params: Mapping[str, Any], directory: Path | str, *, stem: str = "model") -> tuple[Path, Path]:
    """Save the global parameters as ``<stem>.mpk`` (fedpipe's codec) and ``<stem>.safetensors``.

    Returns both paths; the directory is created if needed.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(params)
    codec_path = folder / f"{stem}.mpk"
    dump_file(tensors, codec_path)
    return codec_path, save_safetensors(tensors, folder / f"{stem}.safetensors")


def load_model(path: Path | str) -> dict[str, torch.Tensor]:
    """Load the parameters that ``save_model`` wrote, from either file (chosen by its suffix).

    ValueError (``SafetensorsError`` included) when the file does not hold a name -> tensor map.
    """
    target = Path(path)
    if target.suffix == ".safetensors":
        tensors, _ = load_safetensors(target)
        return tensors
    decoded = load_file(target)
    if isinstance(decoded, Failure):
        raise ValueError(f"{target}: {decoded.failure().reason}")
    value = decoded.unwrap()
    if not isinstance(value, Mapping) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise ValueError(f"{target}: not a map of tensor names to tensors")
    return dict(value)


METRICS_COLUMNS = (
    "round",
    "phase",
    "node",
    "status",
    "samples",
    "train_loss",
    "metric_global_model",
    "metric_local_model",
    "test_samples",
    "seconds",
    "message",
)
"""The columns of the metrics CSV. ``phase`` is ``train`` or ``final`` (the validation of the final
model); ``node`` is a node id, or ``aggregate`` for the row of the round's federation-wide
figures: summed samples, the sample-weighted mean training loss and the test-sample-weighted
metrics. ``metric_global_model`` is the validation of the global model the node received,
``metric_local_model`` that of the model after its local training."""


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _mean_loss(record: RoundRecord) -> float | None:
    pairs = [
        (m.train_loss, next((r.sample_size for r in record.results if r.node_id == node), 0) or 1)
        for node, m in record.metrics.items()
        if m.train_loss is not None
    ]
    total = sum(w for _, w in pairs)
    return None if not pairs else sum(v * w for v, w in pairs) / total


def metrics_rows(result: ExperimentResult) -> list[dict[str, str]]:
    """The metrics CSV's rows: per round, one per node then one ``aggregate`` (see ``METRICS_COLUMNS``)."""
    records = [*result.rounds, *([result.final] if result.final is not None else [])]
    rows: list[dict[str, str]] = []
    for record in records:
        phase = "train" if record.training else "final"
        for node in record.results:
            m = record.metrics.get(node.node_id)
            rows.append(
                {
                    "round": str(record.number),
                    "phase": phase,
                    "node": node.node_id,
                    "status": "ok" if node.success else "failed",
                    "samples": str(node.sample_size) if node.success and record.training else "",
                    "train_loss": _number(m.train_loss if m else None),
                    "metric_global_model": _number(m.before if m else None),
                    "metric_local_model": _number(m.after if m else None),
                    "test_samples": str(m.test_samples) if m and m.test_samples else "",
                    "seconds": "",
                    "message": node.msg,
                }
            )
        ok = [r for r in record.results if r.success]
        rows.append(
            {
                "round": str(record.number),
                "phase": phase,
                "node": "aggregate",
                "status": f"{len(ok)}/{len(record.results)} ok",
                "samples": str(sum(r.sample_size for r in ok)) if record.training else "",
                "train_loss": _number(_mean_loss(record)),
                "metric_global_model": _number(record.weighted("before")),
                "metric_local_model": _number(record.weighted("after")),
                "test_samples": str(sum(m.test_samples for m in record.metrics.values()) or ""),
                "seconds": f"{record.seconds:.3f}",
                "message": "",
            }
        )
    return rows


def write_metrics_csv(result: ExperimentResult, path: Path | str) -> Path:
    """Write ``metrics_rows(result)`` to ``path`` as CSV with a header row; return the path."""
    target = Path(path)
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(metrics_rows(result))
    return target


_LEGEND_NODES = 12
"""Above this many nodes the plot draws them as one family of lines, not a legend entry each."""


def plot_accuracy(
    result: ExperimentResult,
    path: Path | str,
    *,
    title: str = "fedpipe experiment",
    metric: str = "accuracy",
    percent: bool = True,
) -> Path:
    """Plot each node's and the weighted global metric of the global model, round by round, as a PNG.

    The x axis is the round number (1-based): the point of round r is the validation of the
    global model the nodes received in round r; the last point, ``final``, that of the model after
    the last round. ``metric`` names the y axis; ``percent`` shows the values as percentages.
    Needs matplotlib (the ``demo`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [*result.rounds, *([result.final] if result.final is not None else [])]
    scale = 100.0 if percent else 1.0
    xs = list(range(1, len(records) + 1))
    labels = [str(r.number) if r.training else "final" for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    nodes = sorted({n for r in records for n in r.metrics})
    many = len(nodes) > _LEGEND_NODES  # a simulation's hundreds of nodes: thin grey lines, one legend entry
    for i, node in enumerate(nodes):
        values = [r.metrics[node].before if node in r.metrics else None for r in records]
        ys = [np.nan if y is None else scale * y for y in values]
        if many:
            label = f"each node ({len(nodes)})" if i == 0 else None
            ax.plot(xs, ys, color="grey", linewidth=0.6, alpha=0.35, label=label)
        else:
            ax.plot(xs, ys, marker="o", alpha=0.6, label=node)
    glob = [r.weighted("before") for r in records]
    ax.plot(
        xs,
        [np.nan if y is None else scale * y for y in glob],
        marker="s",
        linewidth=2.5,
        color="black",
        label="global (weighted)",
    )
    ax.set_xticks(xs, labels)
    ax.set_xlabel("round (validation of the global model each node received)")
    ax.set_ylabel(f"{metric} on the nodes' test subsets" + (" (%)" if percent else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


@frozen(kw_only=True)
class ExperimentOutputs:
    """Where ``save_outputs`` wrote each file (``plot`` None when matplotlib is not installed)."""

    model_codec: Path
    model_safetensors: Path
    metrics: Path
    plot: Path | None


def save_outputs(
    result: ExperimentResult,
    directory: Path | str,
    *,
    title: str = "fedpipe experiment",
    metric: str = "accuracy",
    percent: bool = True,
) -> ExperimentOutputs:
    """Write the final model (``model.mpk``, ``model.safetensors``), ``metrics.csv`` and ``accuracy.png``.

    ``title``, ``metric`` and ``percent`` go to ``plot_accuracy``; the folder is created if needed.
    """
    folder = Path(directory)
    codec_path, safetensors_path = save_model(result.params, folder)
    metrics = write_metrics_csv(result, folder / "metrics.csv")
    try:
        plot: Path | None = plot_accuracy(
            result, folder / "accuracy.png", title=title, metric=metric, percent=percent
        )
    except ImportError:
        plot = None
    return ExperimentOutputs(
        model_codec=codec_path, model_safetensors=safetensors_path, metrics=metrics, plot=plot
    )
