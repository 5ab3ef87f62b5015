"""The built-in rounds: the standard training round and the validation-only round.

In a LOM round of fedpipe's own federation ``agree_keys`` (after the cheap local checks and the
plan approval, before anything is downloaded or trained) agrees the context's pairwise secrets on
its first round; it does nothing in plain and Joye-Libert rounds.

The standard round ends with ``upload_results`` and then ``save_state``, so that a round that
fails leaves node state as it was: a failed upload saves nothing (no orphan state that no
researcher knows of). The results file already names the state id the round will save
(``RoundContext.state_id`` is fixed before the first step), and the reply carries it once
``save_state`` has succeeded. If the save fails after a successful upload, the round fails
and what is left is one unreferenced, content-addressed file on the exchange, which nothing
points to and no later round reads: harmless. In secure rounds ``encrypt_update`` claims the
(key, round) tau before either: a failed upload or save then leaves that tau spent, which is
the safe side (a tau is never used for two encryptions; the researcher starts a new round).

A custom variant is a few lines of edits by step name, for example clipping the update before
upload and skipping validation on the global parameters:

>>> from fedpipe.testing import fake_ports
>>> from fedpipe.compose import NamedStep, insert_before, names, without
>>> def clip_update(ctx):
...     return Success(ctx)  # a real one would evolve ctx.update with clipped weights
>>> variant = without(
...     insert_before(standard_round(fake_ports()), "upload_results", NamedStep("clip_update", clip_update)),
...     "validate_global",
... )
>>> names(variant)[-3:]
('clip_update', 'upload_results', 'save_state')

Every step declares what it needs and provides (``fedpipe.compose.declare``), so an edit that
leaves a step without what it needs is refused when it is made, naming both steps:

>>> without(standard_round(fake_ports()), "load_plan")
Traceback (most recent call last):
...
fedpipe.compose.CompositionError: step 'init_plan' needs 'plan', which only 'load_plan' provides: it was removed

A step of one's own may declare its contract too, on its ``NamedStep`` (or with ``declare``):
clipping needs the update and provides it again, so it cannot be placed before ``make_update``:

>>> insert_before(standard_round(fake_ports()), "make_update",
...               NamedStep("clip_update", clip_update, needs="update", provides="update"))
Traceback (most recent call last):
...
fedpipe.compose.CompositionError: step 'clip_update' needs 'update', which 'make_update' provides only after it
"""

from returns.result import Success

from fedpipe.compose import NamedStep, Round, check_round, without
from fedpipe.ports import Ports
from fedpipe.steps import (
    check_approval,
    check_secagg,
    collect_aux_vars,
    encrypt_update,
    fetch_aggregator_args,
    fetch_aux_vars,
    fetch_params,
    fetch_plan,
    find_dataset,
    ingest_aux_vars,
    init_plan,
    load_plan,
    load_state,
    make_update,
    parse_training_args,
    save_state,
    set_params,
    split_data,
    start_masks,
    train_model,
    upload_results,
    validate_global,
    validate_local,
)
from fedpipe.steps.agree import agree_keys

__all__ = ["STANDARD_STEPS", "TRAINING_ONLY_STEPS", "standard_round", "validation_round"]

_ = Success  # used by the doctest above


def standard_round(ports: Ports) -> Round:
    """Every step of the reference round (§1.8), bound to ``ports``; results are uploaded before state is saved.

    The round is checked as every edit of it is (``fedpipe.compose.check_round``).
    """
    return check_round(
        (
            NamedStep("check_secagg", check_secagg(ports.secagg_keys)),
            NamedStep("parse_training_args", parse_training_args),
            NamedStep("find_dataset", find_dataset(ports.datasets)),
            NamedStep("fetch_plan", fetch_plan(ports.exchange)),
            NamedStep("check_approval", check_approval(ports.approvals)),
            NamedStep("agree_keys", agree_keys(ports.lom, ports.clock)),
            NamedStep("fetch_params", fetch_params(ports.exchange)),
            NamedStep("start_masks", start_masks(ports.crypter)),
            NamedStep("fetch_aggregator_args", fetch_aggregator_args(ports.exchange)),
            NamedStep("fetch_aux_vars", fetch_aux_vars(ports.exchange)),
            NamedStep("load_plan", load_plan(ports.plans)),
            NamedStep("init_plan", init_plan),
            NamedStep("load_state", load_state(ports.states)),
            NamedStep("set_params", set_params),
            NamedStep("ingest_aux_vars", ingest_aux_vars),
            NamedStep("split_data", split_data),
            NamedStep("validate_global", validate_global(ports.monitor, ports.clock)),
            NamedStep("train_model", train_model(ports.monitor, ports.clock)),
            NamedStep("collect_aux_vars", collect_aux_vars),
            NamedStep("validate_local", validate_local(ports.monitor, ports.clock)),
            NamedStep("make_update", make_update),
            NamedStep(
                "encrypt_update",
                encrypt_update(
                    ports.crypter,
                    ports.secagg_keys,
                    clock=ports.clock,
                    lom_keys=None if ports.lom is None else ports.lom.keys,
                ),
            ),
            NamedStep("upload_results", upload_results(ports.exchange)),
            NamedStep("save_state", save_state(ports.states)),
        )
    )


STANDARD_STEPS: tuple[str, ...] = (
    "check_secagg",
    "parse_training_args",
    "find_dataset",
    "fetch_plan",
    "check_approval",
    "agree_keys",
    "fetch_params",
    "start_masks",
    "fetch_aggregator_args",
    "fetch_aux_vars",
    "load_plan",
    "init_plan",
    "load_state",
    "set_params",
    "ingest_aux_vars",
    "split_data",
    "validate_global",
    "train_model",
    "collect_aux_vars",
    "validate_local",
    "make_update",
    "encrypt_update",
    "upload_results",
    "save_state",
)

TRAINING_ONLY_STEPS: tuple[str, ...] = (
    "agree_keys",
    "start_masks",
    "train_model",
    "collect_aux_vars",
    "validate_local",
    "make_update",
    "encrypt_update",
    "upload_results",
    "save_state",
)


def validation_round(ports: Ports) -> Round:
    """The round for ``training: false`` requests: validate the global parameters, save nothing."""
    return without(standard_round(ports), *TRAINING_ONLY_STEPS)
