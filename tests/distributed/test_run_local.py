"""``run_local`` (the gloo launcher of the tests and the demo) gives its ranks the caller's state
of the moment, although they fork from a server started at the first call: the environment,
standard output and standard error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist

from partialfc.distributed.local import run_local


def _noop(rank: int, world: int) -> None:
    assert dist.get_world_size() == world


def _report(rank: int, world: int, out: str) -> None:
    # one write each: the two ranks share the file (unbuffered, print writes text and end apart)
    sys.stdout.write(f"stdout of rank {rank}/{world}\n")
    sys.stdout.flush()
    sys.stderr.write(f"stderr of rank {rank}/{world}\n")
    sys.stderr.flush()
    Path(out, f"env-{rank}").write_text(os.environ.get("PARTIALFC_TEST_LOCAL", "<unset>"))


def test_ranks_get_the_callers_environment_and_streams_of_the_moment(tmp_path, monkeypatch):
    run_local(_noop, 2)  # the fork server exists from here on, with the streams of now
    monkeypatch.setenv("PARTIALFC_TEST_LOCAL", "set after the server started")
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    saved = os.dup(1), os.dup(2)
    with out_file.open("w") as out, err_file.open("w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            run_local(_report, 2, str(tmp_path))
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    assert sorted(out_file.read_text().splitlines()) == ["stdout of rank 0/2", "stdout of rank 1/2"]
    err_lines = err_file.read_text().splitlines()  # may also hold a library's warnings
    assert {"stderr of rank 0/2", "stderr of rank 1/2"} <= set(err_lines), err_lines
    for rank in (0, 1):
        assert (tmp_path / f"env-{rank}").read_text() == "set after the server started"
