"""The notebooks run top to bottom without error, and the outputs committed with them are not stale.

Each notebook is executed in a fresh kernel by ``scripts/make_notebooks.py``'s own ``execute`` (the
notebooks' asserts check the results); its outputs are then compared with the committed ones by
structure: the same cells and sources, and in every code cell the same kinds of output (stream,
display, error). The numbers inside may differ from run to run (durations); the kinds may not.
"""

import ast
import copy
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REGENERATE = "regenerate the outputs with `.venv/bin/python scripts/make_notebooks.py`"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_notebooks = _load_script()


def _kind(output: Any) -> str:
    kind = str(output.get("output_type"))
    return "display" if kind in ("display_data", "execute_result") else kind


def stale_outputs(committed: Any, executed: Any) -> list[str]:
    """Why the committed notebook's outputs do not match a fresh execution in structure (empty: they do).

    Cells must agree in number, type and source; each code cell must have the same set of output
    kinds (``stream``, ``display``, ``error``) in both; a committed error output is always stale.
    """
    problems: list[str] = []
    if len(committed.cells) != len(executed.cells):
        return [f"{len(committed.cells)} cells committed, {len(executed.cells)} executed"]
    for index, (old, new) in enumerate(zip(committed.cells, executed.cells, strict=True)):
        if old.cell_type != new.cell_type:
            problems.append(f"cell {index}: {old.cell_type} committed, {new.cell_type} executed")
            continue
        if old.source != new.source:
            problems.append(f"cell {index}: the source differs")
        if old.cell_type != "code":
            continue
        old_kinds = {_kind(o) for o in old.get("outputs", [])}
        new_kinds = {_kind(o) for o in new.get("outputs", [])}
        if "error" in old_kinds:
            problems.append(f"cell {index}: an error output is committed")
        if new_kinds and not old_kinds:
            problems.append(f"cell {index}: outputs {sorted(new_kinds)} when executed, none committed")
        elif old_kinds != new_kinds:
            problems.append(
                f"cell {index}: outputs {sorted(old_kinds)} committed, {sorted(new_kinds)} executed"
            )
    return problems


def _code(*sources: str, outputs: list[list[Any]] | None = None) -> Any:
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    for cell, outs in zip(cells, outputs or [[] for _ in cells], strict=True):
        cell.outputs = outs
    return nbformat.v4.new_notebook(cells=cells)


def _stream(text: str = "x\n") -> Any:
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def _error() -> Any:
    return nbformat.v4.new_output("error", ename="E", evalue="boom", traceback=[])


def _image() -> Any:
    return nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Image>"})


@pytest.mark.parametrize(
    ("committed", "executed", "expected"),
    [
        (_code("a", outputs=[[_stream("1\n")]]), _code("a", outputs=[[_stream("2\n")]]), []),
        (_code("a", outputs=[[]]), _code("a", outputs=[[_stream()]]), ["none committed"]),
        (_code("a", outputs=[[_stream()]]), _code("a", outputs=[[]]), ["['stream'] committed, [] executed"]),
        (_code("a", outputs=[[_stream()]]), _code("a", outputs=[[_image()]]), ["['stream'] committed"]),
        (
            _code("a", outputs=[[_error()]]),
            _code("a", outputs=[[_error()]]),
            ["an error output is committed"],
        ),
        (_code("a"), _code("a", "b"), ["1 cells committed, 2 executed"]),
        (_code("a"), _code("b"), ["the source differs"]),
        (
            _code("a"),
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("a")]),
            ["code committed, markdown executed"],
        ),
    ],
    ids=["numbers", "missing", "extra", "kind", "error", "count", "source", "type"],
)
def test_stale_outputs_finds_each_structural_change(
    committed: Any, executed: Any, expected: list[str]
) -> None:
    """The comparison accepts changed numbers and names every structural difference."""
    problems = stale_outputs(committed, executed)
    assert len(problems) == len(expected)
    for problem, part in zip(problems, expected, strict=True):
        assert part in problem


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_as_the_script_writes_it(path: Path) -> None:
    """Outputs made by the script from these very sources, with counts and metadata normalized, no paths."""
    committed = nbformat.read(path, as_version=4)
    recorded = committed.metadata.get(make_notebooks.GENERATED, {}).get("sources_sha256")
    assert recorded == make_notebooks.sources_digest(committed), (
        f"{path.name}: edited after its outputs; {REGENERATE}"
    )
    assert make_notebooks.normalize(copy.deepcopy(committed), path.name) == committed, REGENERATE
    assert any(c.get("outputs") for c in committed.cells if c.cell_type == "code"), f"{path.name}: no outputs"


def _calls(tree: ast.AST) -> set[str]:
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _imports(tree: ast.AST, module: str) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(module):
            yield from (alias.name for alias in node.names)


def test_quickstart_drives_the_experiment_as_fedpipe_run_does() -> None:
    """The quickstart calls the researcher API functions `fedpipe run` calls, not the pieces underneath."""
    notebook = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    code = ast.parse("\n".join(c.source for c in notebook.cells if c.cell_type == "code"))
    cli = ast.parse((ROOT / "fedpipe" / "researcher" / "run_cli.py").read_text(encoding="utf-8"))
    command = next(n for n in ast.walk(cli) if isinstance(n, ast.FunctionDef) and n.name == "run_command")
    # `fedpipe run` ends through the shared `report` of fedpipe.researcher.command: its calls count as the command's.
    helpers = ast.parse((ROOT / "fedpipe" / "researcher" / "command.py").read_text(encoding="utf-8"))
    report = next(n for n in ast.walk(helpers) if isinstance(n, ast.FunctionDef) and n.name == "report")
    assert "report" in _calls(command)
    shared = {"connect", "run_experiment", "save_outputs", "RoundTable"}
    assert shared <= _calls(command) | _calls(report)
    assert shared | {"parse_config"} <= _calls(code)
    assert shared | {"parse_config"} <= set(_imports(code, "fedpipe.researcher"))
    assert not {"Experiment", "BoardClient", "HttpFileExchange", "FedAvg"} & _calls(code)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_its_committed_outputs_are_not_stale(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Execute every cell in a fresh kernel (any error fails); the committed outputs match it in structure."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    )
    committed = nbformat.read(path, as_version=4)
    executed = make_notebooks.execute(path)
    assert not [
        o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    problems = stale_outputs(committed, executed)
    assert not problems, f"{path.name}: " + "; ".join(problems) + f"; {REGENERATE}"


def test_there_are_three_notebooks() -> None:
    """Quickstart, custom round and secure aggregation."""
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_custom_round.ipynb",
        "03_secure_aggregation.ipynb",
    ]
