"""The final validation round builds the training rounds' optimizer: SCAFFOLD with SGD arguments works."""

import tomllib
from pathlib import Path

from fedpipe.researcher.config import parse_config
from fedpipe.simulation import simulate

EXAMPLE = Path(__file__).parents[2] / "examples" / "experiment.toml"


def test_scaffold_with_momentum_validates_its_final_model(tmp_path: Path) -> None:
    # Adam refuses `momentum`: a validation round that fell back to Adam failed on every node
    table = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    table["rounds"] = 2
    table["strategy"] = {"name": "scaffold"}
    table["training_args"] |= {"epochs": 1, "optimizer_args": {"lr": 0.3, "momentum": 0.5}}
    config = parse_config(table, base_dir=EXAMPLE.parent)
    result = simulate(config, nodes=4, seed=0, workdir=tmp_path)
    assert result.final is not None
    assert result.final.metrics and all(m.before is not None for m in result.final.metrics.values())
    assert result.final_metric is not None and result.final_metric > 0.85
