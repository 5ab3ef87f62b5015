"""End to end: `fedpipe demo --secagg` says, round by round, what its nodes encrypted; a plain run says nothing of it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedpipe.researcher.demo import initial_params
from fedpipe.secagg import Encoding, JoyeLibertCrypter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = 2  # the fewest a secagg context takes


def demo(out: Path, *options: str) -> str:
    """Run the demo at its smallest size (one local epoch, two nodes); return what it printed."""
    command = [sys.executable, "-m", "fedpipe", "demo", "--nodes", str(NODES), "--epochs", "1"]
    proc = subprocess.run(
        [*command, "--output", str(out), *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_secure_demo_reports_each_round_and_plain_demo_does_not(tmp_path: Path) -> None:
    """Each secure round prints its scheme, counts and the nodes' encryption (and mask) times; totals at the end."""
    weights = sum(int(v.numel()) for v in initial_params(0).values())
    values = weights + 1  # the weights and the secagg_random factor (the demo's FedAvg has no aux vars)
    # the demo's nodes use the default (Fed-BioMed compatible) packing, the same for any 2048-bit biprime
    ciphertexts = Encoding().ciphertexts(weights, NODES, (1 << 2047) + 1) + 1
    secure = demo(tmp_path / "secure", "--secagg", "--rounds", "2")
    masks = r", masks [\d.]+ m?s cpu \(\d+% ready\)" if hasattr(JoyeLibertCrypter, "mask_stats") else ""
    for round_number in (1, 2):
        pattern = (
            rf"^    round {round_number}: secure \(joye-libert\) {NODES} nodes, "
            rf"{values:,} values -> {ciphertexts:,} ciphertexts/node, encrypt [\d.]+ m?s{masks}$"
        )
        assert re.search(pattern, secure, re.MULTILINE), secure
    assert secure.count("    encrypt  masks(cpu)") == 2, secure  # the per-node columns, training rounds only
    assert re.search(
        rf"^secure aggregation: 2 rounds, {2 * NODES} encrypted updates, {2 * NODES * values:,} values -> "
        rf"{2 * NODES * ciphertexts:,} ciphertexts, encrypt [\d.]+ m?s.* in all, 0 values clipped$",
        secure,
        re.MULTILINE,
    ), secure

    plain = demo(tmp_path / "plain", "--rounds", "1").replace(
        str(tmp_path), "<tmp>"
    )  # the path names the test
    assert "final global accuracy" in plain
    assert not re.search(r"secure|encrypt|ciphertext", plain, re.IGNORECASE), plain
