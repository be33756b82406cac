"""The card options of train / pilot / attach / add-adapter (export/cards.py, docs/CARDS.md):
added to a command by `@card_options`, handed to its function as one `card=CardOptions`."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

_OPTIONS = [
    click.option("--author", help="Who trained it, on its card [default: the OS user]."),
    click.option("--licence", "--license", "licence", metavar="SPDX",
                 help="Its licence: an SPDX expression (Apache-2.0, MIT OR Apache-2.0) or "
                 "LicenseRef-<name> with --licence-file."),
    click.option("--licence-file", "--license-file", "licence_file",
                 type=click.Path(dir_okay=False), help="The text of a LicenseRef- licence."),
    click.option("--base-name", help="The base's name, on the cards."),
    click.option("--base-source", help="Where the base came from (URL, hub id, path)."),
    click.option("--base-licence", "--base-license", "base_licence", metavar="SPDX",
                 help="The base's licence (SPDX) [default: what the base's own card says]."),
    click.option("--intended-use", help="What it is for (free text, on its card)."),
    click.option("--limits", help="Where it must not be trusted (free text, on its card)."),
    click.option("--data-description", help="What the training data is [default: its path]."),
    click.option("--card", "card_file", type=click.Path(dir_okay=False),
                 help="card.toml with any of these fields (docs/CARDS.md); flags win over it."),
]
_NAMES = ("author", "licence", "licence_file", "base_name", "base_source", "base_licence",
          "intended_use", "limits", "data_description", "card_file")


def command_line(ctx: click.Context) -> str:
    """The command as typed: its path and the options given on the command line."""
    words = ["edge-export", *ctx.command_path.split()[1:]]  # the root's name as installed
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name)
        flag = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            words.append(flag if value else (param.secondary_opts or [flag])[0])
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            words += [flag, str(item)] if isinstance(param, click.Option) else [str(item)]
    return shlex.join(words)


def card_options(command: Callable) -> Callable:
    """Add the card options to a click command; it receives them as `card=CardOptions`."""
    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from export.cards import CardOptions

        given = {name: kwargs.pop(name) for name in _NAMES}
        given["card"] = given.pop("card_file")
        ctx = click.get_current_context()
        return command(card=CardOptions(**given, command=command_line(ctx)), **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
