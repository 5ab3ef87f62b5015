"""Help: every command and sub-command has its own page, every option its help text and its default."""

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedpipe.bootstrap import open_owner
from fedpipe.cli import build_parser, main


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:  # an alias names the same parser
                    seen.add(id(child))
                    yield from _parsers(child, (*path, name))


PARSERS = dict(_parsers(build_parser(with_run=False)))


@pytest.mark.parametrize("path", sorted(p for p in PARSERS if p))
def test_every_option_has_help_and_shows_its_default(path: str) -> None:
    parser = PARSERS[path]
    assert parser.description, f"`fedpipe {path}` has no description"
    page = " ".join(parser.format_help().split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help, f"`fedpipe {path}`: {action.dest} has no help"
        if action.option_strings and action.default not in (None, False):
            assert f"(default: {action.default})" in page, (
                f"`fedpipe {path}`: {action.dest} hides its default"
            )


def test_sub_commands_have_their_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`plans approve --help` is the page of approve, not of plans."""
    with pytest.raises(SystemExit) as exit_info:
        main(["plans", "approve", "--help"])
    assert exit_info.value.code == 0
    page = capsys.readouterr().out
    assert page.startswith("usage: fedpipe plans approve") and "--file" in page


def test_empty_lists_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    with open_owner(root, node_id="node-1"):
        pass
    for argv, says in (
        (["datasets", "list"], "no datasets"),
        (["plans", "list"], "no training plans"),
        (["plans", "list", "--pending"], "no training plans with status Pending"),
        (["peers", "list"], "no pinned peers"),
    ):
        assert main([*argv, "--root", str(root)]) == 0
        assert capsys.readouterr().out.strip() == says
