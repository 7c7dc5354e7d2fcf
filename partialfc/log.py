"""Log lines with the time, the level and the rank: ``2026-12-02 08:01:02 INFO [rank 0]
partialfc.train.trainer: resumed from ...``.

The entry points (``partialfc``, ``python -m partialfc.train``) call :func:`configure_logging`
once; library modules only ``logging.getLogger(__name__)``. Rank 0 logs everything from INFO up;
the other ranks log warnings and errors only (the same INFO line from 64 ranks is noise), unless
``all_ranks`` (``--log-all-ranks``, ``[metrics] log_all_ranks``). Logs go to stderr, so that a
command's own output on stdout (a table, a result) stays clean. Times are UTC, as a cluster's are.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class RankFilter(logging.Filter):
    """Stamps each record with the rank and lets INFO and below through on rank 0 only (or on
    every rank with ``all_ranks``); warnings and errors pass on every rank."""

    def __init__(self, rank: int, all_ranks: bool = False) -> None:
        super().__init__()
        self.rank, self.all_ranks = rank, all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.all_ranks or self.rank == 0 or record.levelno >= logging.WARNING


class _Handler(logging.StreamHandler):
    """Ours, so that configuring again replaces it instead of adding a second one."""


def configure_logging(
    rank: int | None = None,
    all_ranks: bool = False,
    level: int = logging.INFO,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Installs our one handler on the root logger; calling again replaces it.

    Args:
        rank: this process's rank (None: ``RANK`` from torchrun's environment, else 0).
        all_ranks: every rank logs INFO (default: rank 0 only).
        level: the ``partialfc`` loggers' level; other libraries log warnings and up.
        stream: where lines go (default: stderr at the time of each line).

    Returns:
        The installed handler.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream if stream is not None else _Stderr())
    formatter = logging.Formatter(FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(RankFilter(rank, all_ranks))
    root.addHandler(handler)  # other libraries' warnings get the same format (root: WARNING)
    logging.getLogger("partialfc").setLevel(level)
    return handler


class _Stderr:
    """``sys.stderr`` looked up at each write: pytest's capture and ``redirect_stderr`` work."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
