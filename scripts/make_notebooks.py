"""Regenerate the notebooks' committed outputs: execute each notebook in place, in a fresh kernel, top to bottom.

Usage: ``.venv/bin/python scripts/make_notebooks.py [NOTEBOOK ...]`` (default: every
``notebooks/*.ipynb``). Each notebook runs with nbclient in a fresh ``python3`` kernel (this
interpreter, with the checkout first on ``PYTHONPATH``) in the notebooks' folder; a cell that
fails stops the script and leaves the file as it was.

What is written is what the cells printed and displayed (stream text, images as base64 PNG),
made reproducible: execution counts are 1, 2, ... in cell order, per-cell timing metadata and the
kernel's version details are dropped, consecutive stream chunks are merged, and an output that
names a temporary folder, the checkout or the home folder is refused (a cell must print names, not
paths, so that the committed text does not depend on the machine that ran it). Figures measured
while running (durations, the last digits of a loss) are kept as they came out. The notebook's
metadata records the digest of the cells the outputs came from, so that a source edited after
the outputs were made is caught without running anything (``tests/e2e/test_notebooks.py``).
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TIMEOUT_S = 600
"""The longest a single cell may run (the quickstart's experiment takes well under a minute)."""
GENERATED = "fedpipe_outputs"
"""Notebook metadata key: which script wrote the outputs, and ``sources_digest`` of the cells they came from."""


def _text(output: Any) -> str:
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    data = output.get("data", {})
    return "\n".join(str(data[k]) for k in ("text/plain", "text/html", "text/markdown") if k in data)


def _merge_streams(outputs: list[Any]) -> list[Any]:
    """Consecutive chunks of the same stream as one output (how a terminal shows them)."""
    merged: list[Any] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (
            last is not None
            and output.get("output_type") == "stream"
            and last.get("output_type") == "stream"
            and last.get("name") == output.get("name")
        ):
            last["text"] = last["text"] + output["text"]
        else:
            merged.append(output)
    return merged


def sources_digest(notebook: Any) -> str:
    """SHA-256 of the notebook's cells (type and source, in order): what its outputs were made from."""
    cells = [[cell.cell_type, cell.source] for cell in notebook.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode("utf-8")).hexdigest()


def machine_paths() -> tuple[str, ...]:
    """Folders whose names must not appear in committed outputs: temporary, checkout, home."""
    folders = {tempfile.gettempdir(), str(ROOT), str(Path.home()), os.path.realpath(tempfile.gettempdir())}
    return tuple(sorted((f for f in folders if len(f) > 1), key=len, reverse=True))


def normalize(notebook: Any, name: str) -> Any:
    """Make an executed notebook reproducible (see the module's text); ValueError for a path in an output.

    Changes ``notebook`` in place and returns it.
    """
    count = 0
    for index, cell in enumerate(notebook.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        cell.outputs = _merge_streams(list(cell.outputs))
        for output in cell.outputs:
            output.pop("transient", None)
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
            text = _text(output)
            for folder in machine_paths():
                if folder in text:
                    raise ValueError(
                        f"{name}: cell {index} prints a path under {folder}; print names, not paths"
                    )
    language = notebook.metadata.get("language_info", {}).get("name", "python")
    notebook.metadata = nbformat.from_dict(
        {
            "kernelspec": dict(notebook.metadata.get("kernelspec", {})),
            "language_info": {"name": language},
            GENERATED: {"by": "scripts/make_notebooks.py", "sources_sha256": sources_digest(notebook)},
        }
    )
    return notebook


def execute(path: Path) -> Any:
    """The notebook at ``path`` executed in a fresh kernel, normalized; the file is not touched.

    nbclient's CellExecutionError when a cell fails (its text carries the cell's traceback).
    """
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    client = nbclient.NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return normalize(notebook, path.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Execute and rewrite each notebook given (default: all); exit status 1 at the first failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="notebooks to regenerate (default: notebooks/*.ipynb)"
    )
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    # the kernel inherits this environment: it imports fedpipe from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        try:
            notebook = execute(path)
        except (nbclient.exceptions.CellExecutionError, ValueError) as err:
            print(f"error: {path.name}: {err}", file=sys.stderr)
            return 1
        nbformat.validate(notebook)
        nbformat.write(notebook, path)
        print(f"wrote {path.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
