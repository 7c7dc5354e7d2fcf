"""One run per ``output_dir``: an advisory lock file held by rank 0 for the whole run.

The lock is a POSIX record lock (``fcntl.lockf``) on ``output_dir/.partialfc.lock``. The kernel
(or, on NFS, the lock manager) releases it when the holding process ends, however it ends, so a
run that was SIGKILLed or lost its node never blocks its own restart; and unlike ``flock`` a
record lock is owned by the process, not inherited by the DataLoader workers it forks, which may
outlive it by a few seconds. The file's text names the holder (host, pid, start time) for the
message a second run prints; the text is informative only, the lock is what counts.

Shared file systems: NFSv3 (with lockd) and NFSv4 honour POSIX locks across hosts; Lustre does with
``-o flock`` (or ``localflock``: then within one host only); some FUSE file systems and object-store
mounts do not support locks at all, and then the run starts with a warning that it is unprotected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from partialfc.distributed import all_reduce_max
from partialfc.errors import UserError

if TYPE_CHECKING:
    from partialfc.train.runtime import Runtime

LOCK_FILE = ".partialfc.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

log = logging.getLogger(__name__)


class OutputDirLocked(UserError):
    """Another live run holds the lock on this output_dir."""

    same_on_every_rank = True  # rank 0 takes the lock; the ranks agree on the verdict


def holder(output_dir: str | os.PathLike[str]) -> str:
    """Who the lock file says holds ``output_dir`` (for messages): ``pid P on host H since T``."""
    try:
        info = json.loads((Path(output_dir) / LOCK_FILE).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {info['pid']} on host {info['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def is_locked(output_dir: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the lock now (a test lock: nothing is kept).

    Opens and closes the lock file, which drops every POSIX lock *this* process holds on it: never
    call it from the process holding the lock.
    """
    path = Path(output_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # no lock file, or one we may not open: then nobody can hold it here
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(fd)  # also releases the test lock
    return False


class RunLock:
    """The lock on ``output_dir``; ``acquire`` raises :class:`OutputDirLocked` when it is taken.

    Use as a context manager, or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                log.warning(
                    "%s: the file system does not support locks (%s); nothing stops a second run "
                    "from using this output_dir",
                    self.path,
                    os.strerror(err.errno),
                )
                return self
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise OutputDirLocked(
                    f"train.output_dir: {self.output_dir} is in use by another run "
                    f"({holder(self.output_dir)}; lock file {self.path}): give this run its own "
                    "train.output_dir, or stop the other one"
                ) from None
            raise
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor; the file stays (harmless)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_lock(output_dir: str | os.PathLike[str], rt: Runtime) -> Iterator[None]:
    """Rank 0 holds the lock on ``output_dir`` for the block; every rank raises
    :class:`OutputDirLocked` when it is taken (the ranks agree in one small collective)."""
    run_lock = RunLock(output_dir)
    failure: OutputDirLocked | None = None
    if rt.is_main:
        try:
            run_lock.acquire()
        except OutputDirLocked as err:
            failure = err
    taken = failure is not None
    if rt.distributed:  # the other ranks learn rank 0's verdict before building anything
        flag = torch.tensor([float(taken)], device=rt.device)
        taken = bool(all_reduce_max(flag).item())
    if taken:
        raise failure or OutputDirLocked(f"train.output_dir: {output_dir} is in use by another run")
    try:
        yield
    finally:
        run_lock.release()
