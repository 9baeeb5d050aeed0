"""The commands the docs give: every `anyword eval` line of docs/reproduce.md parses with today's options."""

from __future__ import annotations

import re
import shlex

import pytest

from anyword.cli import build_argument_parser
from tests.conftest import ROOT


def _reproduce_commands() -> list[list[str]]:
    """The `$E ...` lines of the command block, with the block's shell variables expanded (loops' variables
    stand for one of their values)."""
    text = (ROOT / "docs" / "reproduce.md").read_text()
    block = text.split("```bash\nE=", 1)[1].split("```", 1)[0]
    variables = {"split": "val", "set": "refcoco"}
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #", 1)[0].strip()
        assignment = re.fullmatch(r'([A-Z]+)="(.*)"', line)
        if assignment:
            variables[assignment[1]] = assignment[2]
        elif line.startswith("$E "):
            expanded = re.sub(r"\$(\w+)", lambda m: variables[m[1]], line.removeprefix("$E "))
            commands.append(shlex.split(expanded))
    return commands


def test_every_table_command_parses():
    commands = _reproduce_commands()
    assert len(commands) >= 14  # tables 2-7
    parser = build_argument_parser()
    for command in commands:
        args = parser.parse_args(["eval", *command])
        assert args.preset == "ldm" and args.out.startswith("runs/")
        if args.dataset in ("grefcoco", "refcoco", "refcoco+", "refcocog") and "--fast" in command:
            assert args.referent == "match" and args.adapter.startswith("adapters/")


@pytest.mark.parametrize("table", ["Table 2", "Table 3", "Table 4", "Table 5", "Table 6", "Table 7"])
def test_each_table_has_its_command(table):
    block = (ROOT / "docs" / "reproduce.md").read_text().split("```bash\nE=", 1)[1].split("```", 1)[0]
    assert f"# {table}" in block
