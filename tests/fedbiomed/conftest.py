"""Fixtures of the Fed-BioMed interop tests: the scratch environment with the real package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fbm_python() -> Path:
    """The python of a scratch environment holding the stock fedbiomed 6.4.1 (built on first use).

    ``FEDPIPE_FBM_ENV`` names the environment (default ``<repo>/.fbm-env``); the build script
    installs fedbiomed with ``--no-deps`` and its imports' needs under a ``torch==2.13.0``
    constraint, and is quick when the environment is already there. ``FEDPIPE_SKIP_FEDBIOMED=1``
    skips these tests (a machine without access to the package registry).
    """
    if os.environ.get("FEDPIPE_SKIP_FEDBIOMED") == "1":
        pytest.skip("FEDPIPE_SKIP_FEDBIOMED=1: the Fed-BioMed interop tests are skipped")
    env = Path(os.environ.get("FEDPIPE_FBM_ENV", REPO / ".fbm-env"))
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "fedbiomed_env.sh"), str(env)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if built.returncode != 0:
        sys.stderr.write(built.stdout[-4000:] + built.stderr[-4000:])
        pytest.fail("could not build the Fed-BioMed scratch environment (scripts/fedbiomed_env.sh)")
    return env / "bin" / "python"
