"""The log format (time, level, rank, logger) and the rank filter of partialfc.log."""

from __future__ import annotations

import io
import logging
import re

import pytest

from partialfc.log import configure_logging

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) \[rank (\d+)\] partialfc\.x: (.*)$"
)


@pytest.fixture
def restore_logging():
    root, pfc = logging.getLogger(), logging.getLogger("partialfc")
    handlers, level = list(root.handlers), pfc.level
    yield
    root.handlers[:] = handlers
    pfc.setLevel(level)


def _log(rank: int, all_ranks: bool) -> list[tuple[str, str, str]]:
    out = io.StringIO()
    configure_logging(rank, all_ranks=all_ranks, stream=out)
    log = logging.getLogger("partialfc.x")
    log.info("loss %.2f", 1.5)
    log.warning("careful")
    log.debug("not shown")
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    return [LINE.match(line).groups() for line in lines]


def test_rank_0_logs_info_and_others_only_warnings(restore_logging) -> None:
    assert _log(0, False) == [("INFO", "0", "loss 1.50"), ("WARNING", "0", "careful")]
    assert _log(2, False) == [("WARNING", "2", "careful")]
    assert _log(2, True) == [("INFO", "2", "loss 1.50"), ("WARNING", "2", "careful")]


def test_configuring_again_replaces_the_handler(restore_logging) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(0, stream=first)
    installed = configure_logging(0, stream=second)
    logging.getLogger("partialfc.x").info("once")
    assert first.getvalue() == "" and len(second.getvalue().splitlines()) == 1
    assert installed in logging.getLogger().handlers
