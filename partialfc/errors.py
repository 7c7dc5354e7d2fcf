"""User errors: problems a user can fix (a config field, a path, a dataset, a busy port, a lock).

The command-line entry points print a :class:`UserError` as one line per problem and exit with
status 2, without a traceback (``--verbose`` or ``PARTIALFC_DEBUG=1`` brings it back); any other
exception is a bug and keeps its traceback. Library code raises the subclass that also matches the
built-in it replaces (``ConfigError`` is a ``ValueError``), so callers catching the built-in still
work.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the user's input; ``problems`` holds one line each (at least one)."""

    def __init__(self, *problems: str) -> None:
        if not problems:
            raise TypeError("UserError needs at least one problem")
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


class ConfigError(UserError, ValueError):
    """A config field or a cross-field rule is violated; the message names the key."""


class UserFileError(UserError, FileNotFoundError):
    """A file the user named does not exist or cannot be used."""


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """Whether tracebacks of user errors are wanted (``--verbose`` or ``PARTIALFC_DEBUG=1``)."""
    return "--verbose" in argv or os.environ.get("PARTIALFC_DEBUG", "") not in ("", "0")


def print_user_error(err: UserError, prefix: str = "error", file=None) -> None:
    """One line per problem on stderr: ``error: <problem>``."""
    out = file or sys.stderr
    for problem in err.problems:
        print(f"{prefix}: {problem}", file=out, flush=True)


def run_reporting_user_errors(
    main: Callable[[], int], *, debug: bool = False, quiet: bool = False, prefix: str = "error"
) -> int:
    """Run ``main``; a :class:`UserError` becomes its lines on stderr and exit status 2.

    Args:
        main: the entry point's body.
        debug: re-raise user errors (tracebacks for ``--verbose``).
        quiet: exit 2 without printing (ranks other than 0 when every rank found the same problem).
        prefix: what each line starts with.
    """
    try:
        return main()
    except UserError as err:
        if debug:
            traceback.print_exc()
        elif not quiet:
            print_user_error(err, prefix)
        return USER_ERROR_EXIT
