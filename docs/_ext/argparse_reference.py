"""Sphinx extension: a command line reference generated at build time from the argparse parser.

    ```{gpuhub-commands} spawner_ext.cli:_parser
    ```

calls the function, walks the parser and every subparser (a subcommand added later shows up by
itself), and renders one section per command that runs something: its usage, description and a
table of its arguments with their defaults and help, as `gpuhub COMMAND --help` prints them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from markdown_text import cell, code, escape
from sphinx.util.docutils import SphinxDirective

USAGE_WIDTH = 88
"""Columns of the usage lines: the same on every machine, whatever the terminal."""


def import_parser(path: str) -> argparse.ArgumentParser:
    """`package.module:function` -> the parser that function builds."""
    module, _, name = path.partition(":")
    parser: argparse.ArgumentParser = getattr(importlib.import_module(module), name)()
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    """(name, help, subparser) of each subcommand of `parser`, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def commands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command line, help, parser) of every command that runs something, depth first: `gpuhub
    db upgrade` but not `gpuhub db`, which only holds subcommands."""
    for _name, help_text, sub in _subcommands(parser):
        if any(True for _ in _subcommands(sub)):
            yield from commands(sub)
        else:
            yield sub.prog, help_text, sub


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0:  # a flag (store_true and the like)
        return "off"
    if action.default in (None, argparse.SUPPRESS, "", []):
        return ""
    return code(str(action.default))


def arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    """The Markdown table of a parser's arguments (without -h/--help)."""
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        if isinstance(action, argparse._AppendAction):
            help_text += " (may be given more than once)"
        if action.nargs in ("+", "*"):
            help_text += " (one or more)" if action.nargs == "+" else " (any number)"
        rows.append(
            f"| {cell(code(invocation))} | {cell(_default(action))} | {cell(escape(help_text))} |"
        )
    if not rows:
        return ["No arguments."]
    return ["| argument | default | what |", "| --- | --- | --- |", *rows]


def commands_markdown(parser: argparse.ArgumentParser, level: int = 3) -> str:
    """One Markdown section per command: heading, usage, description, arguments.

    >>> parser = argparse.ArgumentParser(prog="tool")
    >>> sub = parser.add_subparsers()
    >>> run = sub.add_parser("run", help="run it", description="Run the thing.")
    >>> _ = run.add_argument("--port", type=int, default=8000, help="the port")
    >>> _ = run.add_argument("--dry-run", action="store_true", help="print, do `nothing`")
    >>> print(commands_markdown(parser))
    ### `tool run`
    <BLANKLINE>
    ```text
    usage: tool run [-h] [--port PORT] [--dry-run]
    ```
    <BLANKLINE>
    Run the thing.
    <BLANKLINE>
    | argument | default | what |
    | --- | --- | --- |
    | `--port PORT` | `8000` | the port |
    | `--dry-run` | off | print, do `nothing` |
    <BLANKLINE>
    """
    lines: list[str] = []
    for prog, help_text, sub in commands(parser):
        lines += [f"{'#' * level} {code(prog)}", "", "```text", usage(sub), "```", ""]
        description = sub.description or help_text
        if description:
            lines += [escape(description), ""]
        lines += [*arguments_table(sub), ""]
    return "\n".join(lines)


class CommandsDirective(SphinxDirective):
    """`gpuhub-commands MODULE:FUNCTION`: a section per command of the parser it returns."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        parser = import_parser(self.arguments[0])
        self.env.note_reread()  # the code, not this page, is the source: rebuild every time
        holder = nodes.section()
        text = StringList(commands_markdown(parser).splitlines(), source=self.arguments[0])
        self.state.nested_parse(text, self.content_offset, holder, match_titles=True)
        return list(holder.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("gpuhub-commands", CommandsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
