"""The round's notes reach the reply's metadata and the results file, whichever step added them."""

from pathlib import Path
from typing import Any

from returns.result import Result, Success

from fedpipe import execute_round
from fedpipe.codec import loads
from fedpipe.compose import NamedStep, insert_after, insert_before
from fedpipe.context import RoundContext
from fedpipe.errors import RoundError
from fedpipe.rounds import standard_round, validation_round
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode


def noting(text: str) -> NamedStep:
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        return Success(ctx.noted(text))

    return NamedStep(f"note_{text.split()[0]}", step)


def fresh(tmp_path: Path) -> FakeNode:
    return FakeNode(
        settings=NodeSettings(node_id="node-1", root=tmp_path / "node", training_plan_approval=False)
    )


def uploaded(node: FakeNode, url: str) -> dict[str, Any]:
    content = loads(node.exchange.uploads[url]).unwrap()
    assert isinstance(content, dict)
    return content


def test_notes_after_make_update_reach_the_reply(tmp_path: Path) -> None:
    """A note added after make_update, even after the upload, is in reply.metadata["notes"]."""
    node = fresh(tmp_path)
    round_ = insert_after(standard_round(node.ports), "make_update", noting("after-update: clipped"))
    round_ = insert_after(round_, "save_state", noting("last: audited"))
    run = execute_round(node.request(), node.ports, node.settings, round_)
    assert run.reply.success, run.reply.error
    notes = run.reply.metadata["notes"]
    assert notes == list(run.result.unwrap().notes)
    assert "after-update: clipped" in notes and "last: audited" in notes
    # a note of a step before make_update is there too, in the order the steps ran
    assert notes.index("training plan approval is off on this node: plan accepted unchecked") < notes.index(
        "after-update: clipped"
    )


def test_notes_before_the_upload_reach_the_results_file(tmp_path: Path) -> None:
    """The results file carries every note made up to its upload, those after make_update included."""
    node = fresh(tmp_path)
    round_ = insert_before(standard_round(node.ports), "upload_results", noting("before-upload: checked"))
    round_ = insert_after(round_, "upload_results", noting("after-upload: logged"))
    run = execute_round(node.request(), node.ports, node.settings, round_)
    assert run.reply.success, run.reply.error
    file_notes = uploaded(node, run.reply.params_url)["metadata"]["notes"]
    assert "before-upload: checked" in file_notes and "after-upload: logged" not in file_notes
    assert "after-upload: logged" in run.reply.metadata["notes"]


def test_a_validation_round_reply_carries_its_notes(tmp_path: Path) -> None:
    """A round without an update (validation only) still reports its notes."""
    node = fresh(tmp_path)
    round_ = insert_after(validation_round(node.ports), "validate_global", noting("validated: fine"))
    run = execute_round(node.request(training=False), node.ports, node.settings, round_)
    assert run.reply.success, run.reply.error
    assert "validated: fine" in run.reply.metadata["notes"]
    assert "validation_before" in run.reply.metadata
