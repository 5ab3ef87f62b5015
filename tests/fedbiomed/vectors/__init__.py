"""Fixed vectors of Fed-BioMed 6.4.1 (made once by make_message_vectors.py) and the fields they hold."""

import json
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
VECTORS: dict[str, bytes] = {
    name: bytes.fromhex(text) for name, text in json.loads((HERE / "messages.json").read_text()).items()
}
"""Vector name -> the bytes 6.4.1's ``Serializer.dumps(message.to_dict())`` wrote."""
REAL_FIELDS: dict[str, list[list[Any]]] = json.loads((HERE / "fields.json").read_text())
"""6.4.1 message class -> [name, annotation, has a default, default] per field, in field order."""

# the fields make_message_vectors.py gave 6.4.1's classes
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
    """The vectors' model parameters, in ``dtype`` (as in make_message_vectors.py)."""
    return {
        "fc1.weight": (torch.arange(6, dtype=torch.float64).reshape(2, 3) / 7).to(dtype),
        "fc1.bias": torch.tensor([0.5, -1.25], dtype=dtype),
        "fc2.weight": torch.tensor([[3.0, -2.0]], dtype=dtype),
        "fc2.bias": torch.tensor([0.125], dtype=dtype),
    }
