"""What a secure update's metadata says of its encryption, and what the researcher shows of it."""

import itertools
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.codec import loads
from fedpipe.compose import replace
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.researcher.demo import secure_line, secure_totals
from fedpipe.researcher.experiment import ExperimentResult, NodeResult, RoundRecord, secure_report
from fedpipe.rounds import standard_round
from fedpipe.runner import run_round
from fedpipe.settings import NodeSettings
from fedpipe.steps import encrypt_update
from fedpipe.steps.encrypt import MASK_STATS
from fedpipe.testing import FakeClock, FakeCrypter, FakeNode, ScriptedPlan
from fedpipe.testing.crypters import MASK_STATS_EXAMPLE, MaskStatsCrypter
from fedpipe.testing.strategies import json_values

KEY = 2**521 - 1  # digits no count, duration or ciphertext of these tests has
BIPRIME = 2**607 - 1
SECAGG = {"secagg_servkey_id": "sk", "secagg_biprime_id": "bp", "secagg_random": 0.25}
SCAFFOLD_AUX = {"scaffold": {"delta": np.full((2, 2), 0.125), "steps": 7.0, "name": "sgd"}}
_ROOT = Path(tempfile.mkdtemp(prefix="fedpipe-secure-metadata-"))
_ids = itertools.count()


def secure_node(crypter: Any, *, index: int = 0, clock: FakeClock | None = None) -> FakeNode:
    """``node-<index>`` of fakes, with the key material of a 3-node context and its own root."""
    settings = NodeSettings(node_id=f"node-{index}", root=_ROOT / f"n{next(_ids)}")
    node = FakeNode(settings=settings, crypter=crypter, clock=clock or FakeClock())
    parties = ("researcher-1", "node-0", "node-1", "node-2")
    node.secagg_keys.server_keys["sk"] = ServerKeyShare(
        secagg_id="sk", job_id="job-1", parties=parties, key=KEY
    )
    node.secagg_keys.biprimes["bp"] = Biprime(secagg_id="bp", biprime=BIPRIME)
    return node


def uploaded(
    node: FakeNode,
    *,
    aux: Mapping[str, Any] | None = None,
    secure: bool = True,
    with_clock: bool = True,
    round_number: int = 1,
) -> dict[str, Any]:
    """Run one round on ``node`` and return the results file it uploaded (what the researcher reads).

    ``encrypt_update`` reads the node's clock, or no clock at all without ``with_clock``.
    """
    step = encrypt_update(node.crypter, node.secagg_keys, clock=node.clock if with_clock else None)
    rnd = replace(standard_round(node.ports), "encrypt_update", step)
    request = node.request(
        plan=lambda: ScriptedPlan(n_samples=10, lr=0.1, aux_out=dict(aux or {})),
        params={"w": [0.1234567, -0.7654321, 0.5555551]},
        round=round_number,
        **(SECAGG if secure else {}),
    )
    reply = run_round(request, node.ports, node.settings, rnd)
    assert reply.success, reply.error
    content = loads(node.exchange.uploads[reply.params_url]).unwrap()
    assert isinstance(content, dict)
    return content


def leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for v in value.values():
            yield from leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from leaves(v)
    else:
        yield value


def test_secure_update_says_what_was_encrypted_and_how_long() -> None:
    """Counts of what was encrypted, the ciphertexts sent, the crypter's time and its mask figures."""
    clock = FakeClock(tick=0.0)  # time passes only inside the crypter's calls
    crypter = MaskStatsCrypter(clock=clock, seconds=0.25)
    node = secure_node(crypter, clock=clock)
    results = uploaded(node, aux=SCAFFOLD_AUX, round_number=3)
    meta = results["metadata"]["secagg"]
    assert meta["encrypted"] == {"weights": 3, "aux_values": 5, "factor": 1}
    assert meta["ciphertexts"] == len(results["model_weights"]) + len(results["encryption_factor"]) == 9
    assert meta["encrypt_seconds"] == 0.5  # two crypter calls (update, factor) of 0.25 s each
    assert meta["masking"] == dict(MASK_STATS_EXAMPLE)
    assert crypter.asked == [("sk", 3)]  # asked once, after encrypting, for this key and round
    assert meta["scheme"] == "joye-libert" and meta["n_values"] == 8  # the decryption layout stays
    json.dumps(meta, allow_nan=False)  # plain data: it travels as JSON as well as msgpack


def test_a_crypter_without_mask_stats_or_a_step_without_clock_reports_neither() -> None:
    node = secure_node(FakeCrypter())
    meta = uploaded(node, with_clock=False)["metadata"]["secagg"]
    assert "masking" not in meta and "encrypt_seconds" not in meta
    assert meta["encrypted"] == {"weights": 3, "aux_values": 0, "factor": 1}
    assert meta["ciphertexts"] == 4
    silent = secure_node(MaskStatsCrypter(stats=None))
    assert "masking" not in uploaded(silent)["metadata"]["secagg"]


def test_plain_update_has_no_secure_metadata() -> None:
    results = uploaded(secure_node(MaskStatsCrypter()), secure=False)
    assert "secagg" not in results["metadata"]
    assert secure_report("node-0", results) is None


def test_no_key_mask_or_value_reaches_the_metadata() -> None:
    """Every leaf of metadata.secagg is a name, a small count or a figure; none is a key, the biprime,
    a ciphertext or a value of the update (the same round in clear gives the values)."""
    secure = uploaded(
        secure_node(MaskStatsCrypter(clock=FakeClock(tick=0.0), seconds=0.125)), aux=SCAFFOLD_AUX
    )
    clear = uploaded(secure_node(MaskStatsCrypter()), aux=SCAFFOLD_AUX, secure=False)
    meta = secure["metadata"]["secagg"]
    text = json.dumps(meta, allow_nan=False)
    secrets = {KEY, BIPRIME, *secure["model_weights"], *secure["encryption_factor"]}
    values = [*clear["model_weights"]["w"], 0.125, 7.0]  # trained weights, the aux values in clear
    for leaf in leaves(meta):
        assert leaf is None or isinstance(leaf, str | int | float), leaf
        if isinstance(leaf, int) and not isinstance(leaf, bool):
            assert leaf < 2**31 and (leaf not in secrets or leaf < 16), leaf
        if isinstance(leaf, float):
            assert leaf not in values, leaf
    assert str(KEY) not in text and str(BIPRIME) not in text
    assert all(repr(v) not in text for v in clear["model_weights"]["w"])


figures = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**2100),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.floats(), max_size=2),
)


@given(
    st.dictionaries(st.sampled_from(MASK_STATS), figures)
    | st.dictionaries(st.text(max_size=8), figures, max_size=4).map(lambda d: {**d, "mask": KEY})
)
def test_masking_keeps_only_the_known_figures_as_finite_durations(stats: dict[str, Any]) -> None:
    """Whatever the crypter returns, only MASK_STATS entries that are real numbers in [0, 1e9] pass."""
    node = secure_node(MaskStatsCrypter(stats=stats))
    meta = uploaded(node)["metadata"]["secagg"]

    def figure(v: Any) -> bool:
        if not isinstance(v, int | float) or isinstance(v, bool):
            return False
        return (0 <= v <= 1e9) if isinstance(v, int) else (math.isfinite(v) and 0 <= v <= 1e9)

    expected = {k: float(v) for k, v in stats.items() if k in MASK_STATS and figure(v)}
    assert meta.get("masking", {}) == expected
    assert ("masking" in meta) == bool(expected)
    json.dumps(meta, allow_nan=False)


def node_result(node_id: str, results: Mapping[str, Any]) -> NodeResult:
    return NodeResult(node_id=node_id, success=True, sample_size=10, results=results)


def test_the_researcher_prints_what_each_round_encrypted() -> None:
    """Node metadata -> the researcher's reports -> the demo's per-round line and run totals."""
    readiness = [1.0, 0.5, 1.0]
    round_results = []
    for i in range(3):
        clock = FakeClock(tick=0.0)
        stats = {**MASK_STATS_EXAMPLE, "mask_cpu_seconds": 1.5 + i, "precomputed_fraction": readiness[i]}
        node = secure_node(
            MaskStatsCrypter(clock=clock, seconds=0.125 * (i + 1), stats=stats), index=i, clock=clock
        )
        round_results.append(node_result(f"node-{i}", uploaded(node)))
    failed = NodeResult(node_id="node-3", success=False, msg="no reply before the round deadline")
    record = RoundRecord(round=1, results=(*round_results, failed), metrics={}, seconds=2.0)
    assert [r.node_id for r in record.secure] == ["node-0", "node-1", "node-2"]
    assert [r.encrypt_seconds for r in record.secure] == [0.25, 0.5, 0.75]
    assert secure_line(record) == (
        "round 2: secure (joye-libert) 3 nodes, 4 values -> 4 ciphertexts/node, "
        "encrypt 0.75 s, masks 3.5 s cpu (50% ready)"
    )
    plain = RoundRecord(
        round=0,
        results=(node_result("node-0", uploaded(secure_node(FakeCrypter()), secure=False)),),
        metrics={},
        seconds=1.0,
    )
    assert secure_line(plain) is None
    assert secure_totals(ExperimentResult(rounds=(plain,), params={})) is None
    assert secure_totals(ExperimentResult(rounds=(plain, record), params={})) == (
        "secure aggregation: 1 round, 3 encrypted updates, 12 values -> 12 ciphertexts, "
        "encrypt 1.5 s, masks 7.5 s cpu (83% ready on average) in all, 0 values clipped"
    )


def test_an_older_node_without_the_new_fields_still_reads_as_secure() -> None:
    """Counts fall back on the layout and the ciphertexts; no timing is made up."""
    results = {
        "encrypted": True,
        "model_weights": [11, 12],
        "encryption_factor": [13],
        "metadata": {"secagg": {"scheme": "joye-libert", "n_weights": 40, "n_values": 40}},
    }
    report = secure_report("node-0", results)
    assert report is not None
    assert (report.values, report.ciphertexts, report.encrypt_seconds, report.mask_cpu_seconds) == (
        41,
        3,
        None,
        None,
    )
    line = secure_line(
        RoundRecord(round=0, results=(node_result("node-0", results),), metrics={}, seconds=1.0)
    )
    assert line == "round 1: secure (joye-libert) 1 node, 41 values -> 3 ciphertexts/node"


@given(json_values, st.text(max_size=40), figures)
def test_secure_report_reads_any_results_without_raising(junk: Any, scheme: str, figure: Any) -> None:
    """Results come from the network: any shape gives None or a report with a printable scheme."""
    timings = {"encrypt_seconds": figure, "ciphertexts": figure, "out_of_range": figure}
    for results in (
        {"encrypted": True, "metadata": junk},
        {"encrypted": True, "metadata": {"secagg": junk}, "model_weights": junk},
        {"encrypted": True, "metadata": {"secagg": {"scheme": scheme, "encrypted": junk, "masking": junk}}},
        {"encrypted": True, "metadata": {"secagg": {**timings, "masking": {"mask_cpu_seconds": figure}}}},
        {"encrypted": junk},
    ):
        report = secure_report("n", results)
        if report is None:
            assert results["encrypted"] is not True
            continue
        assert report.scheme == "unknown" or report.scheme == scheme
        assert report.scheme.isprintable() and "\x1b" not in report.scheme
        assert report.values >= 0 and report.ciphertexts >= 0 and report.out_of_range >= 0
        for seconds in (report.encrypt_seconds, report.mask_cpu_seconds):
            assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
