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
    """A problem with the user's input; ``problems`` holds one line each (at least one).

    ``same_on_every_rank``: every rank of a run finds it (a config check, an agreed verdict), so
    only rank 0 prints it; otherwise the rank that found it prints it, naming itself.
    """

    same_on_every_rank = False

    def __init__(self, *problems: str) -> None:
        if not problems:
            raise TypeError("UserError needs at least one problem")
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems

    def __reduce__(self):
        # Subclasses take other constructor arguments (path, key): rebuild from the state, so an
        # error met in a DataLoader worker reaches the main process as itself.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[UserError], args: tuple, state: dict) -> UserError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ConfigError(UserError, ValueError):
    """A config field or a cross-field rule is violated; the message names the key."""

    same_on_every_rank = True


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
    main: Callable[[], int], *, debug: bool = False, rank: int | None = None
) -> int:
    """Run ``main``; a :class:`UserError` becomes its lines on stderr and exit status 2.

    Args:
        main: the entry point's body.
        debug: print the traceback too (``--verbose``, ``PARTIALFC_DEBUG=1``).
        rank: this process's rank in a distributed run (None: a lone process). Errors every rank
            finds are printed by rank 0 only; others by their rank, which they name.
    """
    try:
        return main()
    except UserError as err:
        if debug:
            traceback.print_exc()
        if rank is None:
            print_user_error(err)
        elif not err.same_on_every_rank:
            print_user_error(err, f"error (rank {rank})")
        elif rank == 0:
            print_user_error(err)
        return USER_ERROR_EXIT
