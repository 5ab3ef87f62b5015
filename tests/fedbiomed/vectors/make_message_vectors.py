"""Regenerate messages.json: Fed-BioMed 6.4.1's own encoding of a few messages (run once, by hand).

It also writes fields.json, the field table of every 6.4.1 message class. Run with the scratch
environment that holds the real package (never from fedpipe's tests):

    .fbm-env/bin/python tests/fedbiomed/vectors/make_message_vectors.py

Each vector is ``Serializer.dumps(MessageClass(**fields).to_dict())``; the test module builds the
same fields itself and compares fedpipe's bytes with these.
"""

import dataclasses
import json
from pathlib import Path

import torch
from fedbiomed.common import message as m
from fedbiomed.common.metrics import MetricTypes
from fedbiomed.common.serializer import Serializer

IDS = {"researcher_id": "RESEARCHER_0b7f", "node_id": "NODE_5e1a", "node_name": "node1"}
DATASET = {
    "name": "bc-part1",
    "data_type": "csv",
    "tags": ["breast-cancer"],
    "description": "shard 1",
    "shape": {"csv": [285, 31]},
    "dtypes": {"mean_radius": "Float64", "diagnosis": "Int64"},
    "dataset_id": "dataset_3c2d",
    "dataset_parameters": {},
}


def params(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "fc1.weight": (torch.arange(6, dtype=torch.float64).reshape(2, 3) / 7).to(dtype),
        "fc1.bias": torch.tensor([0.5, -1.25], dtype=dtype),
        "fc2.weight": torch.tensor([[3.0, -2.0]], dtype=dtype),
        "fc2.bias": torch.tensor([0.125], dtype=dtype),
    }


VECTORS = {
    "PingReply": m.PingReply(request_id="request_1", **IDS),
    "SearchReply": m.SearchReply(request_id="request_2", databases=[DATASET], count=1, **IDS),
    "SearchReply_nodtypes": m.SearchReply(
        request_id="request_2", databases=[{**DATASET, "dtypes": {}}], count=1, **IDS
    ),
    "ListReply": m.ListReply(
        request_id="request_3",
        success=True,
        databases=[{k: v for k, v in DATASET.items() if k != "dtypes"}],
        count=1,
        **IDS,
    ),
    "ErrorMessage": m.ErrorMessage(
        request_id="request_4",
        extra_msg="This node does not handle `FARequest` requests.",
        errnum="FB301",
        **IDS,
    ),
    "ErrorMessage_unattributed": m.ErrorMessage(extra_msg="Message was not properly formatted", **IDS),
    "TrainReply": m.TrainReply(
        request_id="request_5",
        experiment_id="exper_77",
        success=True,
        dataset_id="dataset_3c2d",
        timing={"rtime_training": 2.4565, "ptime_training": 1.2729},
        msg="",
        state_id="node_state_9f",
        sample_size=228,
        encrypted=False,
        params=params(torch.float32),
        optimizer_args={"lr": 0.01},
        optim_aux_var={},
        encryption_factor=None,
        **IDS,
    ),
    "TrainReply_float64": m.TrainReply(
        request_id="request_6",
        experiment_id="exper_77",
        success=True,
        dataset_id="dataset_3c2d",
        timing={"rtime_training": 0.5, "ptime_training": 0.25},
        msg="",
        state_id="node_state_a0",
        sample_size=57,
        params=params(torch.float64),
        optimizer_args={},
        optim_aux_var={},
        **IDS,
    ),
    "TrainReply_validation": m.TrainReply(
        request_id="request_7",
        experiment_id="exper_77",
        success=True,
        dataset_id="dataset_3c2d",
        timing={},
        msg="",
        **IDS,
    ),
    "TrainReply_failure": m.TrainReply(
        request_id="request_8",
        experiment_id="exper_77",
        success=False,
        dataset_id="",
        timing={},
        msg="Training failed on the node.",
        state_id="node_state_b1",
        **IDS,
    ),
    "TrainingPlanStatusReply": m.TrainingPlanStatusReply(
        request_id="request_9",
        experiment_id="exper_77",
        success=True,
        approval_obligation=False,
        status="Not Registered",
        msg="This node does not require training plan approval (maybe for debugging purposes).",
        training_plan="class P:\n    pass\n",
        training_plan_id=None,
        **IDS,
    ),
    "ApprovalReply": m.ApprovalReply(
        request_id="request_10",
        training_plan_id="training_plan_42",
        message="",
        status=0,
        success=True,
        **IDS,
    ),
    # what a 6.4.1 researcher sends, for the decoder
    "SearchRequest": m.SearchRequest(
        request_id="request_11", researcher_id="RESEARCHER_0b7f", tags=["breast-cancer"]
    ),
    "TrainRequest": m.TrainRequest(
        request_id="request_12",
        researcher_id="RESEARCHER_0b7f",
        experiment_id="exper_77",
        state_id=None,
        training_args={
            "loader_args": {"batch_size": 16},
            "optimizer_args": {"lr": 0.01},
            "epochs": 2,
            "test_ratio": 0.2,
            "test_on_global_updates": True,
            "test_on_local_updates": True,
            "random_seed": 0,
            "log_interval": 5,
            "num_updates": None,
            "dry_run": False,
            "batch_maxnum": None,
            "test_batch_size": 0,
            "shuffle_testing_dataset": False,
            "test_metric": MetricTypes.ACCURACY,
            "test_metric_args": {},
            "fedprox_mu": None,
            "use_gpu": False,
            "dp_args": None,
            "share_persistent_buffers": True,
        },
        dataset_id="dataset_3c2d",
        training=True,
        model_args={"in_features": 3, "hidden": 2},
        params=params(torch.float32),
        training_plan="import torch\nclass BreastCancerPlan:\n    pass\n",
        training_plan_class="BreastCancerPlan",
        round=0,
        aggregator_args={},
        secagg_arguments={},
        optim_aux_var=None,
    ),
}


def _default(f: dataclasses.Field) -> object:
    return None if f.default is dataclasses.MISSING else f.default


def field_table() -> dict[str, list[list[object]]]:
    """Every message dataclass of 6.4.1: [name, annotation, has a default, default (repr)] per field."""
    table = {}
    for name, cls in sorted(vars(m).items()):
        if isinstance(cls, type) and issubclass(cls, m.Message) and dataclasses.is_dataclass(cls):
            table[name] = [
                [f.name, str(f.type), f.default is not dataclasses.MISSING, _default(f)]
                for f in dataclasses.fields(cls)
            ]
    return table


here = Path(__file__).parent
out = {name: Serializer.dumps(msg.to_dict()).hex() for name, msg in VECTORS.items()}
(here / "messages.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
lines = [f" {json.dumps(name)}: {json.dumps(specs)}" for name, specs in field_table().items()]
(here / "fields.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
print(f"wrote {len(out)} vectors")
