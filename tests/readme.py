"""Reading the README as executable docs: its sections, code blocks and `kronos-jobs` lines.

A helper module, not a test module: the README tests (tests/test_readme*.py, tests/e2e/test_up.py,
tests/test_compose.py) import it.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from kronos_jobs.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def parse_cli(argv: list[str]) -> None:
    """Parse `kronos-jobs ...` with the real CLI without running it (UsageError when wrong)."""
    assert argv[0] == "kronos-jobs"
    command, args, name = main, list(argv[1:]), "kronos-jobs"
    # Global options come before the command.
    while args and args[0].startswith("--") and command is main:
        args = args[2:]
    while isinstance(command, click.Group):
        if not args and command.invoke_without_command:  # e.g. `kronos-jobs schedules` lists them
            break
        assert args and args[0] in command.commands, f"{' '.join(argv)}: no such command {args[:1]}"
        name = args.pop(0)
        command = command.commands[name]
    command.make_context(name, args)
