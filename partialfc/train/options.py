"""The config as command-line options: one per dataclass field, with its type, default and doc.

A field's doc is the string literal under it in :mod:`partialfc.train.config` (read from the
source with :mod:`ast`, as Sphinx reads attribute docstrings), so ``--help``, the README's table
test and the dataclasses cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from partialfc.train import config

LIST_AND_TABLE_HELP = """\
Every field below is an option --SECTION.KEY VALUE (or --SECTION.KEY=VALUE), anywhere after
CONFIG.toml; the command line overrides the file, the file overrides the defaults shown.
  booleans   true/false (also 1/0, yes/no, on/off)
  optional   a field whose type ends in "| None" is unset by default; give a value to set it
  lists      --eval.sets a.bin b.bin: every value up to the next --option (a comma also
             separates: --eval.sets=a.bin,b.bin); --eval.sets= gives the empty list
  tables     --head.margin_args.m 0.35: one entry at a time, typed as TOML types it
             (0.35 a float, 4 an int, true a bool, anything else a string); entries from the
             file that are not given keep their values"""


@dataclass(frozen=True)
class Option:
    """One config field as the command line names it."""

    name: str
    """``section.key``."""
    type: str
    """The field's type as written in the dataclass (``float``, ``bool | None``, ``list[str]``)."""
    default: Any
    """The dataclass default."""
    doc: str
    """The field's docstring, whitespace as in the source."""
    table: bool
    """A ``dict`` field, given one entry at a time (``--head.margin_args.NAME VALUE``)."""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal right under its annotated assignment.

    Empty when the source cannot be read (a frozen application without ``.py`` files).
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef), node
    docs = {}
    for stmt, following in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


def sections() -> list[tuple[str, type]]:
    """``(name, dataclass)`` of every config section, in the order of :class:`Config`."""
    hints = typing.get_type_hints(config.Config)
    return [(name, hints[name]) for name in config.SECTIONS]


def options() -> list[Option]:
    """Every field of every section, in declaration order."""
    found = []
    for section, section_type in sections():
        hints = typing.get_type_hints(section_type)
        docs = field_docs(section_type)
        for f in dataclasses.fields(section_type):
            hint = hints[f.name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            found.append(
                Option(
                    name=f"{section}.{f.name}",
                    type=_type_name(hint),
                    default=default,
                    doc=docs.get(f.name, ""),
                    table=typing.get_origin(hint) is dict,
                )
            )
    return found


def _type_name(hint: Any) -> str:
    """``int``, ``list[str]``, ``str | None``: a field's type as it is written."""
    # typing.get_origin first: on Python 3.10 ``list[str]`` is also an instance of ``type``.
    if typing.get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def help_text(width: int = 100) -> str:
    """The config part of ``python -m partialfc.train --help``: every option, by section."""
    lines = [LIST_AND_TABLE_HELP]
    by_name = {o.name: o for o in options()}
    for section, section_type in sections():
        summary = (inspect.getdoc(section_type) or "").split("\n")[0]
        lines += ["", f"[{section}] {summary}"]
        for name, option in by_name.items():
            if not name.startswith(f"{section}."):
                continue
            spelling = f"--{name}.NAME VALUE" if option.table else f"--{name} VALUE"
            if option.type.startswith("list["):
                spelling += " ..."
            lines.append(f"  {spelling}  ({option.type}, default: {option.default!r})")
            lines += textwrap.wrap(
                " ".join(option.doc.split()),
                width,
                initial_indent="      ",
                subsequent_indent="      ",
                break_on_hyphens=False,
            )
    return "\n".join(lines)
