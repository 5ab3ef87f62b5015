"""The built-in steps of a round: pure steps are functions, steps that need ports are factories."""

from fedpipe.steps.approval import check_approval
from fedpipe.steps.arguments import find_dataset, parse_training_args
from fedpipe.steps.data import split_data, split_indices
from fedpipe.steps.encrypt import encrypt_update, start_masks
from fedpipe.steps.evaluate import validate_global, validate_local
from fedpipe.steps.fetch import fetch_aggregator_args, fetch_aux_vars, fetch_params, fetch_plan
from fedpipe.steps.plan import collect_aux_vars, ingest_aux_vars, init_plan, load_plan, set_params
from fedpipe.steps.secagg import check_secagg
from fedpipe.steps.state import load_state, save_state
from fedpipe.steps.train import make_update, train_model
from fedpipe.steps.upload import results_payload, upload_results

__all__ = [
    "check_approval",
    "check_secagg",
    "collect_aux_vars",
    "encrypt_update",
    "fetch_aggregator_args",
    "fetch_aux_vars",
    "fetch_params",
    "fetch_plan",
    "find_dataset",
    "ingest_aux_vars",
    "init_plan",
    "load_plan",
    "load_state",
    "make_update",
    "parse_training_args",
    "results_payload",
    "save_state",
    "set_params",
    "split_data",
    "split_indices",
    "start_masks",
    "train_model",
    "upload_results",
    "validate_global",
    "validate_local",
]
