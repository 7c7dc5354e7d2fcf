"""The margin registry: name -> margin class, and the one way to build a margin from a config.

Every margin joins with ``@register("name")``; a config names it (``[head] margin = "NAME"``) and
passes its constructor arguments by name (``[head.margin_args]``). An argument the class does not
take, or a value of the wrong kind (``m = 2.7`` where an integer is needed), is an error: no
argument is shared between margins, so none can silently mean something else.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from partialfc.margins.base import Margin

MarginT = TypeVar("MarginT", bound=type[Margin])

MARGINS: dict[str, type[Margin]] = {}
"""Registered margins by name, in registration order."""


def register(name: str) -> Callable[[MarginT], MarginT]:
    """Class decorator: add a margin class to :data:`MARGINS` under ``name``.

    Raises:
        ValueError: ``name`` is taken.
    """

    def add(cls: MarginT) -> MarginT:
        if name in MARGINS:
            raise ValueError(f"margin {name!r} is already registered")
        MARGINS[name] = cls
        return cls

    return add


def margin_arguments(name: str) -> dict[str, Any]:
    """Constructor arguments of the margin ``name`` with their defaults, in signature order.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    params = inspect.signature(_margin_class(name)).parameters
    return {key: p.default for key, p in params.items()}


def build_margin(name: str, args: Mapping[str, Any] | None = None) -> Margin:
    """``MARGINS[name](**args)``, with the arguments checked first.

    Args:
        name: a key of :data:`MARGINS`.
        args: constructor arguments by name; absent ones keep the class's defaults.

    Raises:
        ValueError: unknown name, an argument the class does not take (the message lists those it
            takes), a value of the wrong type, or one the class rejects.
    """
    cls = _margin_class(name)
    args = dict(args or {})
    known = margin_arguments(name)
    unknown = sorted(set(args) - set(known))
    if unknown:
        takes = ", ".join(known) or "no arguments"
        raise ValueError(
            f"margin {name!r} takes no argument {', '.join(map(repr, unknown))}; it takes: {takes}"
        )
    hints = typing.get_type_hints(cls.__init__)
    for key, value in args.items():
        expected = hints.get(key)
        if expected is not None and not _is_kind(value, expected):
            raise ValueError(
                f"margin {name!r} argument {key!r} must be {_KIND_NAMES.get(expected, expected)}, "
                f"got {value!r}"
            )
    return cls(**args)


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _is_kind(value: Any, expected: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False  # True is an int to Python, not to a config
    if expected is int:
        return isinstance(value, int)
    if expected is float:
        return isinstance(value, (int, float))
    if expected is str:
        return isinstance(value, str)
    return True  # other annotations: the class checks its own values


def _margin_class(name: str) -> type[Margin]:
    cls = MARGINS.get(name)
    if cls is None:
        raise ValueError(f"unknown margin {name!r}; known margins: {', '.join(MARGINS)}")
    return cls
