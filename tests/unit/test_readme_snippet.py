"""The README's library example runs as written, in a fresh directory, as a user would run it."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Use it as a library"
"""The README section whose fenced ``python`` blocks are run: each must be complete on its own."""


def section_blocks(markdown: str, heading: str) -> list[str]:
    """The fenced ``python`` blocks between ``heading`` and the next heading of its level or above.

    >>> section_blocks("## A\\n```python\\nx = 1\\n```\\n## B\\n```python\\ny\\n```\\n", "## A")
    ['x = 1\\n']
    >>> section_blocks("## B\\n", "## A")
    []
    """
    lines = markdown.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip() == heading]
    if not starts:
        return []
    level = heading.split(" ", 1)[0]
    body: list[str] = []
    for line in lines[starts[0] + 1 :]:
        marker = line.split(" ", 1)[0]
        if line.startswith("#") and set(marker) == {"#"} and len(marker) <= len(level):
            break
        body.append(line)
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", "".join(body), flags=re.MULTILINE | re.DOTALL)


def test_the_library_example_runs_as_written(tmp_path: Path) -> None:
    """Issue 14 item 7: every Python block of the library section runs alone, in an empty directory."""
    blocks = section_blocks(README.read_text(encoding="utf-8"), SECTION)
    assert blocks, f"README.md has no ```python block under {SECTION!r}"
    assert any("standard_round" in block for block in blocks), "the library example composes no round"
    for i, block in enumerate(blocks):
        script = tmp_path / f"block_{i}.py"
        script.write_text(block, encoding="utf-8")
        ran = subprocess.run(
            [sys.executable, script.name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, f"README block {i} failed:\n{block}\n{ran.stderr}"
        assert "Traceback" not in ran.stderr
        if "to_dict()" in block:
            assert "'success': True" in ran.stdout, ran.stdout
