"""Write a dataset folder atomically: build it in a hidden folder beside it, rename it into place.

A command that writes several files into one folder (``train.rec``, ``train.idx``, ``property``)
and fails midway must not leave a mixture of old and new files: ``inspect`` would then report the
old ``property`` against a half-written ``.rec``. :func:`staged_folder` gives the command an empty
temporary folder in the same parent (so the final rename stays on one file system) and, only when
the body finished, swaps it in; on any exception, Ctrl-C or SIGTERM the temporary folder is removed
and the output folder is left byte for byte as it was.

The output folder may be missing, empty, or hold an earlier output of the same command (one of the
``owned`` names). Replacing an earlier output needs ``overwrite``; other entries in it (say the
``lfw.bin`` next to an insightface ``train.rec``) are carried over into the new folder. A folder
that holds only other things is refused, so that a mistyped path (a home folder, the image folder
itself) is never renamed away.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from partialfc.errors import UserError

log = logging.getLogger(__name__)

# The exit status of a process ended by SIGTERM, as the shell reports it (128 + 15).
SIGTERM_EXIT = 143


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException, like KeyboardInterrupt, so that no handler swallows it."""


def check_target(out: Path, owned: Collection[str], overwrite: bool, command: str) -> None:
    """Raises :class:`UserError` unless ``out`` may receive a new output.

    Args:
        out: the output folder.
        owned: names of the entries the command writes (what ``overwrite`` replaces).
        overwrite: whether replacing an earlier output is allowed.
        command: the command, for the messages (``"partialfc pack"``).
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; {command} writes a folder")
    if os.stat(out).st_dev != os.stat(out.parent).st_dev:
        raise UserError(
            f"{out}: is a mount point, so a folder built beside it cannot be renamed onto it; "
            "write into a folder inside it"
        )
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    earlier = [name for name in entries if name in owned]
    if not earlier:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UserError(
            f"{out}: is not empty ({shown}) and holds no earlier output of {command} "
            f"({', '.join(sorted(owned))}); choose a new or empty folder"
        )
    if not overwrite:
        raise UserError(
            f"{out}: already holds a dataset ({', '.join(earlier)}); pass --overwrite to replace it"
        )


@contextmanager
def staged_folder(
    out: str | os.PathLike[str], owned: Collection[str], overwrite: bool, command: str
) -> Iterator[Path]:
    """Yields an empty hidden folder beside ``out``; renames it to ``out`` when the body succeeds.

    Args:
        out: the output folder (its parent is created if missing).
        owned: names the command writes; see :func:`check_target`.
        overwrite: allow replacing an earlier output.
        command: the command, for the messages.

    Raises:
        UserError: ``out`` cannot take the output (checked before the body and again at the end,
            in case another process wrote there meanwhile).
    """
    out = Path(out).resolve()  # a symlink to a folder: build beside, and replace, its target
    check_target(out, owned, overwrite, command)
    _warn_leftovers(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create a folder there ({exc.strerror})") from None
    try:
        # mkdtemp makes the folder private (0700); the dataset gets the usual permissions, or the
        # ones of the folder it replaces.
        os.chmod(tmp, _mode_for(out))
        yield tmp
        with _signals_blocked():  # the swap is a few renames: let Ctrl-C wait for it
            check_target(out, owned, overwrite, command)
            _swap_in(tmp, out, owned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def _warn_leftovers(out: Path) -> None:
    """Folders a killed run (SIGKILL, power loss) left beside ``out``: only the user can judge."""
    for leftover in sorted(out.parent.glob(f".{out.name}.partial-*")):
        log.warning("%s: an unfinished output of a killed or running command; delete it", leftover)
    for leftover in sorted(out.parent.glob(f".{out.name}.replaced-*")):
        log.warning(
            "%s: the previous content of %s, left by a command killed while swapping it in; "
            "move back what you need and delete it",
            leftover,
            out,
        )


def _mode_for(out: Path) -> int:
    if out.is_dir():
        return os.stat(out).st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _swap_in(tmp: Path, out: Path, owned: Collection[str]) -> None:
    """Renames ``tmp`` to ``out``, carrying over the entries of ``out`` that are not ``owned``."""
    if not out.exists() or not any(out.iterdir()):
        os.rename(tmp, out)  # onto an empty folder, rename(2) replaces it in one step
        return
    old = out.parent / f".{out.name}.replaced-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    for entry in old.iterdir():
        if entry.name not in owned:
            os.rename(entry, out / entry.name)
    shutil.rmtree(old)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM in this process raises :class:`Terminated` (cleanup runs).

    Only the process that entered the block raises: forked workers inherit the handler, and there
    the signal keeps its default action (``multiprocessing`` stops its pool with SIGTERM).
    """
    pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
