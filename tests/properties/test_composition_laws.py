"""Laws of composition by declared needs: a round either composes and runs whole, or is refused up front."""

import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe import ErrorCode, execute_round
from fedpipe.compose import INITIAL_CONTEXT, CompositionError, NamedStep, contract_of, names, without
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.rounds import STANDARD_STEPS, standard_round
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode

_ROOT = Path(tempfile.mkdtemp(prefix="fedpipe-composition-laws-"))
_ids = itertools.count()
SECAGG = {"secagg_servkey_id": "sk", "secagg_biprime_id": "bp", "secagg_random": 0.25}


def fresh_node() -> FakeNode:
    """A node of fakes holding the key material of a Joye-Libert context it is party to."""
    node = FakeNode(settings=NodeSettings(node_id="node-1", root=_ROOT / f"n{next(_ids)}"))
    parties = ("researcher-1", "node-1", "node-2")
    node.secagg_keys.server_keys["sk"] = ServerKeyShare(
        secagg_id="sk", job_id="job-1", parties=parties, key=7
    )
    node.secagg_keys.biprimes["bp"] = Biprime(secagg_id="bp", biprime=2**127 - 1)
    return node


def provides_of(step: NamedStep) -> frozenset[str]:
    contract = contract_of(step)
    return frozenset() if contract is None else contract.provides


def with_dependents(full: tuple[NamedStep, ...], removed: set[str]) -> set[str]:
    """``removed`` plus every step left needing what no kept step before it provides."""
    out = set(removed)
    provided = set(INITIAL_CONTEXT)
    for step in full:
        contract = contract_of(step)
        if step.name in out or contract is None:
            continue
        if contract.needs <= provided:
            provided |= contract.provides
        else:
            out.add(step.name)
    return out


@settings(max_examples=80, deadline=None)
@given(st.sets(st.sampled_from(STANDARD_STEPS)), st.booleans(), st.booleans())
def test_a_round_composes_and_runs_whole_or_is_refused_naming_the_need(
    drawn: set[str], dependents_too: bool, secure: bool
) -> None:
    """Removing any steps of the standard round either composes a round whose every need is met,
    and which then never fails for lack of one (no ``internal`` error: no missing value, no
    exception), or is refused at composition naming a kept step and the need nothing before it
    provides, and a removed step that provided it when one did.

    Half the draws also remove the steps that need what a drawn step provided, so that as many
    rounds compose (and run) as are refused.
    """
    node = fresh_node()
    full = standard_round(node.ports)
    removed = with_dependents(full, drawn) if dependents_too else drawn
    try:
        round_ = without(full, *removed)
    except CompositionError as err:
        kept = [s for s in full if s.name not in removed]
        assert err.step in names(kept)
        at = names(kept).index(err.step)
        provided = set(INITIAL_CONTEXT)
        for step in kept[:at]:
            provided |= provides_of(step)
        assert err.need not in provided
        step_contract = contract_of(kept[at])
        assert step_contract is not None and err.need in step_contract.needs
        message = str(err)
        assert "\n" not in message and message.startswith(f"step {err.step!r} needs {err.need!r}, which ")
        producers = [s.name for s in full if s.name in removed and err.need in provides_of(s)]
        if producers:
            assert all(repr(p) in message for p in producers) and "removed" in message
        return
    provided = set(INITIAL_CONTEXT)
    for step in round_:
        contract = contract_of(step)
        assert contract is not None
        assert contract.needs <= provided, (step.name, contract.needs - provided)
        provided |= contract.provides
    request = node.request(**(SECAGG if secure else {}))
    run = execute_round(request, node.ports, node.settings, round_)
    error = run.reply.error
    assert error is None or error.code is not ErrorCode.INTERNAL, error
