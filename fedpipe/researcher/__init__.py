"""The researcher's API: run a federated experiment against a running ``fedpipe serve`` and its nodes.

``fedpipe run`` is this API behind a command line; the quickstart notebook calls it directly::

    from fedpipe.researcher import connect, parse_config, run_experiment, save_outputs

    config = parse_config({"rounds": 3, "dataset": "breast-cancer", "plan_class": "BreastCancerMlp",
                           "training_args": {"epochs": 2}})      # or load_config("exp.toml")
    with connect(server_url, researcher_token) as federation:
        result = run_experiment(config, federation, plan_file="plan.py", workdir="scratch")
    outputs = save_outputs(result, "out")          # model.mpk, model.safetensors, metrics.csv, accuracy.png
    print(result.final_metric)

- configuration: ``parse_config`` / ``load_config`` -> ``ExperimentConfig`` (``ConfigError``: one line);
- connection and run: ``connect`` -> ``Federation``, ``select_nodes``, ``run_experiment`` ->
  ``ExperimentResult`` (``ResearcherError``: one line, with an ``exit_code``);
- what a run gives: ``RoundRecord`` per round (``number`` from 1, per-node ``NodeResult`` and
  ``NodeMetrics``, ``weighted(...)``), ``ProgressEvent`` for progress displays;
- display: ``RoundTable`` (a table per round), ``ProgressPrinter`` (a line per node and round);
- outputs: ``save_outputs``, ``save_model`` / ``load_model``, ``save_safetensors`` /
  ``load_safetensors``, ``write_metrics_csv``, ``plot_accuracy``;
- the pieces underneath, for experiments of one's own: ``Experiment``, ``BoardClient``, the
  strategies ``FedAvg`` and ``ScaffoldStrategy``, and ``build_strategy``.
"""

from fedpipe.researcher.board import BoardClient, BoardError
from fedpipe.researcher.config import (
    ConfigError,
    ExperimentConfig,
    SecureAggregationConfig,
    StrategyConfig,
    load_config,
    parse_config,
)
from fedpipe.researcher.console import ProgressPrinter, RoundTable
from fedpipe.researcher.experiment import (
    Experiment,
    ExperimentResult,
    ExperimentStopped,
    NodeMetrics,
    NodeResult,
    ProgressEvent,
    RoundRecord,
    Strategy,
)
from fedpipe.researcher.federation import (
    Federation,
    ResearcherError,
    build_strategy,
    connect,
    initial_params_from_plan,
    run_experiment,
    select_nodes,
)
from fedpipe.researcher.outputs import (
    ExperimentOutputs,
    SafetensorsError,
    load_model,
    load_safetensors,
    plot_accuracy,
    save_model,
    save_outputs,
    save_safetensors,
    write_metrics_csv,
)
from fedpipe.researcher.strategies import FedAvg, ScaffoldStrategy

__all__ = [
    "BoardClient",
    "BoardError",
    "ConfigError",
    "Experiment",
    "ExperimentConfig",
    "ExperimentOutputs",
    "ExperimentResult",
    "ExperimentStopped",
    "FedAvg",
    "Federation",
    "NodeMetrics",
    "NodeResult",
    "ProgressEvent",
    "ProgressPrinter",
    "ResearcherError",
    "RoundRecord",
    "RoundTable",
    "SafetensorsError",
    "ScaffoldStrategy",
    "SecureAggregationConfig",
    "Strategy",
    "StrategyConfig",
    "build_strategy",
    "connect",
    "initial_params_from_plan",
    "load_config",
    "load_model",
    "load_safetensors",
    "parse_config",
    "plot_accuracy",
    "run_experiment",
    "save_model",
    "save_outputs",
    "save_safetensors",
    "select_nodes",
    "write_metrics_csv",
]
