"""Help-text conventions applied to every command at once, so no option can miss them.

typer shows Python types as placeholders (`<list[str]>`, `<str>`, and `<bool>` on flags); we
show the option's own name in capitals (`--size SIZE`), the values of a choice (`[auto|cpu|cuda]`)
and nothing after a flag, the way click-based tools do. Docstrings are written wrapped at 100
columns; the help re-flows their paragraphs to the terminal instead of keeping those breaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer


def _commands(command: Any) -> Iterator[Any]:
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _commands(sub)


def _metavar(param: Any) -> str:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and descriptor.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in descriptor.choices) + "]"
    return (param.name or "value").upper()


def _reflow(text: str) -> str:
    """Join the lines of each paragraph (paragraphs are separated by a blank line)."""
    return "\n\n".join(re.sub(r"\s*\n\s*", " ", part.strip()) for part in re.split(r"\n\s*\n", text.strip()))


def _bare_help_option(command: Any) -> None:
    """`--help` is made at render time, not in `params`: blank its placeholder as it is made."""
    make = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option


def polish_help(root: Any) -> Any:
    """Give every parameter of `root` and its subcommands a readable placeholder; returns `root`."""
    for command in _commands(root):
        if command.help:
            command.help = _reflow(command.help)
        _bare_help_option(command)
        for param in command.params:
            if isinstance(param, typer.core.TyperArgument):
                param.metavar = param.metavar or _metavar(param)
                param.display_type_rich = lambda ctx: None  # the name column already shows the placeholder
            elif param.metavar is None:  # else set on purpose where it is declared
                param.metavar = "" if param.is_flag else _metavar(param)
    return root
