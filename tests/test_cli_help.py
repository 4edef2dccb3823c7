"""Every bracket a command's help text writes reaches the user: rich reads "[...]" as markup and drops it
unless it is escaped."""

from __future__ import annotations

import re

import click
import typer
from typer.testing import CliRunner

from fedrec.simulations.main import app


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def test_bracketed_help_text_is_printed():
    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        wanted = [
            re.sub(r"\\\[", "[", p.help)
            for p in command.params
            if isinstance(p, click.Option) and p.help and "[" in p.help
        ]
        if not wanted:
            continue
        result = CliRunner().invoke(app, [*path, "--help"], env={"TERMINAL_WIDTH": "2000", "COLUMNS": "2000"})
        assert result.exit_code == 0, result.output
        flat = " ".join(result.output.split())
        for text in wanted:
            for fragment in re.findall(r"\[[^\]]*\]", text):
                assert fragment in flat, f"fedrec {' '.join(path)} --help lost {fragment!r}"
                checked += 1
    assert checked >= 4
