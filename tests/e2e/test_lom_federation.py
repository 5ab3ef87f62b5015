"""End to end: LOM secure aggregation in fedpipe's own federation (server, node processes, researcher)."""

import subprocess
import sys
from pathlib import Path

import pytest

from fedpipe.researcher.demo import DemoOptions, run_experiment
from fedpipe.secagg.lom import FEDPIPE_TARGET_RANGE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_lom_round_decrypts_to_the_plain_weighted_mean(tmp_path: Path) -> None:
    """Three node processes agree their keys through `fedpipe serve` and mask their updates; the
    researcher's sum decrypts to the plain run's weighted mean.

    One round, so both runs aggregate the very same local updates (training is seeded): what is
    left is quantization, below two steps 2c/(T-1) of fedpipe's LOM range (truncated levels, then a
    truncated mean), far inside the one step of 6.4.1's T = 2**13.
    """
    plain = run_experiment(DemoOptions(rounds=1, nodes=3, epochs=1, output=tmp_path / "plain", quiet=True))
    secure = run_experiment(
        DemoOptions(
            rounds=1, nodes=3, epochs=1, output=tmp_path / "lom", secagg=True, secagg_scheme="lom", quiet=True
        )
    )
    (record,) = secure.rounds
    assert [r.scheme for r in record.secure] == ["lom"] * 3
    worst = max(float((plain.params[k].float() - secure.params[k].float()).abs().max()) for k in plain.params)
    assert worst <= 2 * 2 * 3 / (FEDPIPE_TARGET_RANGE - 1), worst
    assert worst <= 2 * 3 / (2**13 - 1)
    assert plain.final_metric is not None and secure.final_metric is not None
    assert abs(plain.final_metric - secure.final_metric) <= 0.02
    # each node agreed the context once and kept it; the server kept no secret
    from fedpipe.bootstrap import open_owner

    for i in range(3):
        with open_owner(tmp_path / "lom" / "nodes" / f"node-{i + 1}") as owner:
            assert len(owner.peers.list()) == 2
            assert owner.secagg_keys.claimed_rounds("lom-job-demo-seed0") == (0,)


def test_the_demo_command_with_lom_completes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    tiny = ["--rounds", "1", "--nodes", "2", "--epochs", "1", "--output", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "fedpipe", "demo", "--secagg-scheme", "lom", *tiny],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FedAvg (Adam, lr 0.01) + LOM secure aggregation" in proc.stdout
    assert "node-1: pinned the identity keys of node-2" in proc.stdout
    assert "round 1: secure (lom) 2 nodes" in proc.stdout
    assert "final global accuracy:" in proc.stdout
