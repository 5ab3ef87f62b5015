"""Steps declare what they need and provide; a round missing a provider is refused when composed."""

from collections.abc import Sequence
from pathlib import Path

import pytest
from attrs import evolve
from returns.result import Result, Success

from fedpipe import run_round
from fedpipe.compose import (
    INITIAL_CONTEXT,
    CompositionError,
    NamedStep,
    check_round,
    contract_of,
    declare,
    insert_after,
    insert_before,
    names,
    replace,
    when,
    without,
)
from fedpipe.context import RoundContext
from fedpipe.errors import RoundError
from fedpipe.fedbiomed.mapping import InlineRound
from fedpipe.fedbiomed.round import FEDBIOMED_STEPS, fedbiomed_round, fedbiomed_validation_round
from fedpipe.fedbiomed.secure import FedbiomedSecagg, Scheme
from fedpipe.rounds import STANDARD_STEPS, TRAINING_ONLY_STEPS, standard_round, validation_round
from fedpipe.settings import NodeSettings
from fedpipe.steps import make_update
from fedpipe.testing import FakeCrypter, FakeNode, fake_ports, lom_federation


def unmet_needs(round_: Sequence[NamedStep]) -> list[tuple[str, str]]:
    """Every (step, need) of ``round_`` that neither the first context nor an earlier step provides."""
    provided = set(INITIAL_CONTEXT)
    unmet = []
    for step in round_:
        contract = contract_of(step)
        if contract is None:
            continue
        unmet += [(step.name, need) for need in sorted(contract.needs - provided)]
        provided |= contract.provides
    return unmet


def passthrough(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    return Success(ctx)


def inline(secagg: FedbiomedSecagg | None = None) -> InlineRound:
    return InlineRound(
        request_id="r",
        researcher_id="R",
        experiment_id="e",
        plan_source="",
        params={"w": [0.0]},
        aggregator_args={},
        aux_vars={},
        secagg_arguments=None if secagg is None else {"secagg_scheme": 2},
        secagg=secagg,
    )


JL = FedbiomedSecagg(
    scheme=Scheme.JOYE_LIBERT, context_id="sk", parties=("n1", "n2"), random=0.5, clipping_range=None
)
LOM = FedbiomedSecagg(
    scheme=Scheme.LOM, context_id="dh", parties=("n1", "n2"), random=None, clipping_range=None
)


def variants() -> dict[str, tuple[NamedStep, ...]]:
    """Every round the project builds: fedpipe's own (plain, Joye-Libert, LOM) and Fed-BioMed's."""
    plain = fake_ports()
    lom = evolve(plain, lom=lom_federation(["n1", "n2"])["n1"])
    return {
        "standard": standard_round(plain),
        "standard, Joye-Libert crypter": standard_round(evolve(plain, crypter=FakeCrypter())),
        "standard, LOM with agree_keys": standard_round(lom),
        "validation": validation_round(plain),
        "validation, LOM": validation_round(lom),
        "Fed-BioMed": fedbiomed_round(plain, inline()),
        "Fed-BioMed, Joye-Libert": fedbiomed_round(plain, inline(JL), crypter=FakeCrypter()),
        "Fed-BioMed, LOM": fedbiomed_round(plain, inline(LOM), insecure_validation=False),
        "Fed-BioMed validation": fedbiomed_validation_round(plain, inline()),
        "Fed-BioMed validation, Joye-Libert": fedbiomed_validation_round(plain, inline(JL)),
    }


@pytest.mark.parametrize("name", list(variants()))
def test_every_round_variant_composes_with_every_need_met(name: str) -> None:
    """Each built-in variant passes the composition check, and each of its steps declares a contract."""
    round_ = variants()[name]
    assert check_round(round_) == round_
    assert unmet_needs(round_) == []
    assert [s.name for s in round_ if contract_of(s) is None] == []
    if name.startswith("standard"):
        assert names(round_) == STANDARD_STEPS
    elif name.startswith("Fed-BioMed validation"):
        assert "train_model" not in names(round_)
    elif name.startswith("Fed-BioMed"):
        assert names(round_) == FEDBIOMED_STEPS


def test_standard_steps_carry_their_own_declarations() -> None:
    """The contracts live on the steps (``declare``), not on a table kept beside the round."""
    for step in standard_round(fake_ports()):
        assert step.needs is None and step.provides is None, step.name
        assert contract_of(step.step) is not None, step.name


def test_removing_load_plan_is_refused_naming_both_steps() -> None:
    """Acceptance: dropping a step whose output a later step needs fails when composed, one line."""
    with pytest.raises(CompositionError) as caught:
        without(standard_round(fake_ports()), "load_plan")
    message = str(caught.value)
    assert message == "step 'init_plan' needs 'plan', which only 'load_plan' provides: it was removed"
    assert "\n" not in message
    assert (caught.value.step, caught.value.need) == ("init_plan", "plan")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("removed", "step", "need"),
    [
        ("fetch_plan", "check_approval", "plan_source"),
        ("parse_training_args", "init_plan", "args"),
        ("find_dataset", "split_data", "dataset"),
        ("check_secagg", "agree_keys", "lom"),
        ("fetch_params", "set_params", "params"),
        ("fetch_aggregator_args", "init_plan", "aggregator_args"),
        ("fetch_aux_vars", "ingest_aux_vars", "aux_vars"),
        ("split_data", "validate_global", "split"),
        ("train_model", "collect_aux_vars", "training"),
        ("make_update", "encrypt_update", "update"),
    ],
)
def test_removing_a_producer_names_the_first_step_that_needs_it(removed: str, step: str, need: str) -> None:
    """Every producer of the standard round has a consumer that refuses to run without it."""
    with pytest.raises(CompositionError) as caught:
        without(standard_round(fake_ports()), removed)
    assert (
        str(caught.value) == f"step {step!r} needs {need!r}, which only {removed!r} provides: it was removed"
    )


def test_removing_a_producer_with_its_consumers_in_one_call_is_accepted() -> None:
    """``without`` checks the round it returns, so a producer goes together with what needs it."""
    round_ = without(standard_round(fake_ports()), *TRAINING_ONLY_STEPS)
    assert unmet_needs(round_) == [] and names(round_)[-1] == "validate_global"
    shorter = without(round_, "split_data", "validate_global")
    assert names(shorter)[-1] == "ingest_aux_vars"


def test_fedbiomed_round_refuses_a_removed_replacement() -> None:
    """The Fed-BioMed variant's own steps declare their contracts: dropping take_plan is refused."""
    with pytest.raises(CompositionError, match="which only 'take_plan' provides: it was removed"):
        without(fedbiomed_round(fake_ports(), inline()), "take_plan")


def test_a_need_nobody_provides_is_refused() -> None:
    """A custom step that needs what no step provides is refused when it is inserted."""
    add_noise = NamedStep("add_noise", passthrough, needs="noise_seed", provides="update")
    with pytest.raises(CompositionError) as caught:
        insert_before(standard_round(fake_ports()), "upload_results", add_noise)
    assert str(caught.value) == "step 'add_noise' needs 'noise_seed', which no earlier step provides"


def test_a_step_placed_before_its_provider_is_refused() -> None:
    """A declared step put before the step that provides its need says which step comes too late."""

    @declare(needs="update", provides="update")
    def clip_update(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        return Success(ctx)

    with pytest.raises(CompositionError) as caught:
        insert_after(standard_round(fake_ports()), "train_model", NamedStep("clip_update", clip_update))
    assert (
        str(caught.value) == "step 'clip_update' needs 'update', which 'make_update' provides only after it"
    )
    placed = insert_after(standard_round(fake_ports()), "make_update", NamedStep("clip_update", clip_update))
    assert names(placed)[names(placed).index("make_update") + 1] == "clip_update"


def test_a_replacement_that_drops_a_provision_is_refused() -> None:
    """Replacing a producer by a step declared to provide nothing says the producer was replaced."""
    with pytest.raises(CompositionError) as caught:
        replace(standard_round(fake_ports()), "load_plan", NamedStep("load_plan", passthrough, needs=()))
    assert (
        str(caught.value)
        == "step 'init_plan' needs 'plan', which 'load_plan' provided before it was replaced"
    )


def test_undeclared_custom_steps_compose_anywhere() -> None:
    """Existing user code keeps working: an undeclared step needs nothing and provides nothing..."""
    round_ = standard_round(fake_ports())
    first = insert_before(round_, "check_secagg", NamedStep("audit", passthrough))
    assert names(first)[0] == "audit" and contract_of(first[0]) is None
    # ...and, replacing a step, it is taken to do that step's job
    swapped = replace(round_, "split_data", passthrough)
    contract = contract_of(swapped[names(swapped).index("split_data")])
    assert contract is not None and contract.provides == {"split"} and contract.needs == frozenset()


def test_a_guarded_step_keeps_its_contract() -> None:
    """``when`` runs a step only sometimes; where it runs it needs what the step needs."""
    guarded = when(lambda ctx: ctx.request.training, make_update)
    assert contract_of(guarded) == contract_of(make_update)
    with pytest.raises(CompositionError, match="step 'early_update' needs 'plan'"):
        insert_before(standard_round(fake_ports()), "check_secagg", NamedStep("early_update", guarded))


def test_a_declared_custom_step_runs_where_it_composes(tmp_path: Path) -> None:
    """A declared custom step placed after its provider composes and runs in a real round."""
    node = FakeNode(settings=NodeSettings(node_id="node-1", root=tmp_path / "node"))
    seen: list[object] = []

    def record_update(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        seen.append(ctx.update)
        return Success(ctx)

    round_ = insert_after(
        standard_round(node.ports), "make_update", NamedStep("record_update", record_update, needs="update")
    )
    reply = run_round(node.request(), node.ports, node.settings, round_)
    assert reply.success and len(seen) == 1 and seen[0] is not None
