"""A scratch virtual environment with Flower 1.42's simulation engine and CPU torch, for comparison.

Run: ``python benchmarks/flower_env.py [PATH]``. Creates (once) a virtual environment, by default
at ``~/.cache/fedpipe-bench/flower-1.42``, with ``torch==2.13.0`` (the CPU build this machine's
package index serves) and ``flwr[simulation]==1.42.*`` installed against a constraints file that
pins torch, so that Flower's dependencies cannot pull another torch or the CUDA libraries. Prints
the environment's python executable. A marker file records what was installed: a second call
returns at once. Nothing of fedpipe is installed there; the benchmark runs
``benchmarks/flower_sim.py`` with that python.
"""

import json
import subprocess
import sys
import venv
from pathlib import Path

DEFAULT_PATH = Path.home() / ".cache" / "fedpipe-bench" / "flower-1.42"
TORCH = "torch==2.13.0"
FLOWER = "flwr[simulation]==1.42.*"
# What the marker records; a change here rebuilds the environment.
SPEC = {"torch": TORCH, "flwr": FLOWER, "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
MARKER = "fedpipe-bench.json"

_CHECK = """
import importlib.metadata as md, json, torch, flwr
cuda_dists = sorted(d.metadata["Name"] for d in md.distributions()
                    if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "triton")))
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "flwr": flwr.__version__, "cuda_dists": cuda_dists}))
"""


def _log(message: str) -> None:
    print(f"[flower-env] {message}", file=sys.stderr, flush=True)


def _python(path: Path) -> Path:
    return path / "bin" / "python"


def _pip(python: Path, *args: str) -> None:
    _log("pip install " + " ".join(args))
    # pip's stdout would pollute a caller's capture: all of it goes to stderr, less the warnings
    # about this machine's configured local indexes that hold no such package.
    process = subprocess.Popen(
        [str(python), "-m", "pip", "install", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if not line.startswith("WARNING: Location "):
            sys.stderr.write(line)
    if process.wait() != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed (exit {process.returncode})")


def _verify(python: Path) -> dict[str, object]:
    result = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the Flower environment does not import torch and flwr: {last}")
    found: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    if found["cuda"] is not None or found["cuda_dists"]:
        raise RuntimeError(
            f"the Flower environment's torch is not the CPU build: torch {found['torch']}, "
            f"CUDA {found['cuda']}, {found['cuda_dists']}"
        )
    if not str(found["flwr"]).startswith("1.42."):
        raise RuntimeError(f"the Flower environment has flwr {found['flwr']}, not 1.42")
    return found


def ensure_flower_env(path: Path | None = None) -> Path:
    """Return the python executable of a venv with ``flwr[simulation]==1.42.*`` and CPU torch.

    Creates the environment at ``path`` (default ``~/.cache/fedpipe-bench/flower-1.42``) when its
    marker is missing or records another specification; otherwise returns at once. Raises a
    ``RuntimeError`` with a one-line message when an install fails, or when the result does not
    import flwr 1.42 or its torch is not the CPU build.
    """
    root = (path or DEFAULT_PATH).expanduser()
    python = _python(root)
    marker = root / MARKER
    if marker.is_file() and python.exists():
        try:
            if json.loads(marker.read_text()).get("spec") == SPEC:
                return python
        except (OSError, ValueError):
            pass
    _log(f"creating {root} (takes a few minutes)")
    # clear: a half-built environment from an interrupted run is started over.
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    constraints = root / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    _pip(python, TORCH)
    _pip(python, "-c", str(constraints), FLOWER)
    _log("checking the environment")
    found = _verify(python)
    marker.write_text(json.dumps({"spec": SPEC, "found": found}, indent=2) + "\n")
    _log(f"ready: flwr {found['flwr']}, torch {found['torch']}")
    return python


def main() -> None:
    """Create the environment (at ``argv[1]`` when given) and print its python executable."""
    try:
        python = ensure_flower_env(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(python)


if __name__ == "__main__":
    main()
