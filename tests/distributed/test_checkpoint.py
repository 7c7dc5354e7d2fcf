"""Checkpoints of the head written on N gloo ranks resume exactly on N, M and one process.

With sample_rate 1 the head's maths does not depend on the world size (the global batch is the
same), so a run that saves on 2 ranks and continues on 3 (or 1) must reproduce the per-step losses
and centres of an uninterrupted 2-rank run, in float64, to rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from partialfc import checkpoint
from partialfc.train.state import head_state, restore_head_state
from tests.distributed.harness import run_ranks

C, D, B = 11, 6, 12
STEPS, SPLIT = 6, 3


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.randint(
        0, C, (B,), generator=g
    )


def _setup(
    rate: float = 1.0, optimizer: str = "sgd", k: int = 1
) -> tuple[pfc.PartialFC, pfc.SparseSGD]:
    head = pfc.PartialFC(
        pfc.SphereFace(m=2, base=10.0, lambda_min=0.5),
        D,
        C,
        sample_rate=rate,
        dtype=torch.float64,
        seed=3,
        sub_centers=k,
    )
    if optimizer == "adamw":
        return head, pfc.SparseAdamW([head.weight], lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)
    opt = pfc.SparseSGD([head.weight], lr=0.3, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    return head, opt


def _train(head, opt, steps, rank, world) -> list[float]:
    losses = []
    for step in steps:
        x, y = _batch(step)
        per = B // world
        opt.zero_grad(set_to_none=True)
        loss = head(x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _first_part(
    rank: int, world: int, out: str, rate: float, optimizer: str = "sgd", k: int = 1
) -> None:
    head, opt = _setup(rate, optimizer, k)
    losses = _train(head, opt, range(SPLIT), rank, world)
    checkpoint.save(head_state(head, opt), out, step=SPLIT)
    if rank == 0:
        Path(out, "losses.json").write_text(json.dumps(losses))


def _second_part(
    rank: int, world: int, out: str, rate: float, optimizer: str = "sgd", k: int = 1
) -> None:
    head, opt = _setup(rate, optimizer, k)
    state = head_state(head, opt)
    checkpoint.load(state, checkpoint.latest_checkpoint(out))
    restore_head_state(head, state)
    assert head.step == SPLIT and head.margin.iteration == SPLIT
    losses = _train(head, opt, range(SPLIT, STEPS), rank, world)
    checkpoint.save(head_state(head, opt), out, step=STEPS, keep=1)
    if rank == 0:
        Path(out, f"resumed-{world}.json").write_text(json.dumps(losses))


def _uninterrupted(
    rank: int, world: int, out: str, rate: float, optimizer: str = "sgd", k: int = 1
) -> None:
    head, opt = _setup(rate, optimizer, k)
    losses = _train(head, opt, range(STEPS), rank, world)
    checkpoint.save(head_state(head, opt), out, step=STEPS)
    if rank == 0:
        Path(out, "straight.json").write_text(json.dumps(losses))


@pytest.mark.parametrize(
    ("resume_world", "optimizer", "k"),
    [(2, "sgd", 1), (3, "sgd", 1), (1, "sgd", 1), (3, "adamw", 1), (3, "sgd", 3), (1, "adamw", 3)],
)
def test_resume_on_any_world_size_continues_exactly(
    tmp_path: Path, resume_world: int, optimizer: str, k: int
) -> None:
    """k = 3: sub-centres, saved as the (C*3, D) class-major matrix, resharded by classes."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_ranks(_uninterrupted, 2, str(straight), 1.0, optimizer, k)
    run_ranks(_first_part, 2, str(split), 1.0, optimizer, k)
    saved = checkpoint.read_class_centers(split)
    assert saved.shape == (C * k, D)
    run_ranks(_second_part, resume_world, str(split), 1.0, optimizer, k)

    expected = json.loads((straight / "straight.json").read_text())
    got = json.loads((split / "losses.json").read_text()) + json.loads(
        (split / f"resumed-{resume_world}.json").read_text()
    )
    assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-10, atol=1e-12)
    assert_close(
        checkpoint.read_class_centers(split),
        checkpoint.read_class_centers(straight),
        rtol=1e-10,
        atol=1e-12,
    )
    assert [p.name for p in checkpoint.list_checkpoints(split)] == [f"step-{STEPS:08d}"], (
        "keep=1 pruned"
    )


def _reshard_only(rank: int, world: int, src: str, dst: str, optimizer: str = "sgd") -> None:
    head, opt = _setup(0.5, optimizer)
    state = head_state(head, opt)
    checkpoint.load(state, src)
    restore_head_state(head, state)
    checkpoint.save(head_state(head, opt), dst, step=head.step)


@pytest.mark.parametrize(
    ("optimizer", "keys"),
    [("sgd", ["momentum_buffer"]), ("adamw", ["exp_avg", "exp_avg_sq"])],
)
def test_moving_between_world_sizes_leaves_the_centres_unchanged(
    tmp_path: Path, optimizer: str, keys: list[str]
) -> None:
    # sampled: each step updates some rows only
    run_ranks(_first_part, 2, str(tmp_path / "a"), 0.5, optimizer)
    before = checkpoint.read_class_centers(tmp_path / "a")
    src = checkpoint.latest_checkpoint(tmp_path / "a")
    run_ranks(_reshard_only, 3, str(src), str(tmp_path / "b"), optimizer)
    b = checkpoint.latest_checkpoint(tmp_path / "b")
    run_ranks(_reshard_only, 1, str(b), str(tmp_path / "c"), optimizer)
    for moved in ("b", "c"):
        assert torch.equal(checkpoint.read_class_centers(tmp_path / moved), before)
        for key in keys:
            got = checkpoint.read_class_centers(tmp_path / moved, key=f"head.weight.{key}")
            want = checkpoint.read_class_centers(tmp_path / "a", key=f"head.weight.{key}")
            assert torch.equal(got, want), key


def test_single_process_checkpoint_and_atomicity(tmp_path: Path) -> None:
    assert not torch.distributed.is_initialized()
    head, opt = _setup()
    _train(head, opt, range(2), 0, 1)
    first = checkpoint.save(head_state(head, opt), tmp_path, step=2)
    # A crash while writing step 3 leaves a hidden temporary folder and no marker: ignored.
    (tmp_path / ".step-00000003.tmp").mkdir()
    (tmp_path / ".step-00000003.tmp" / "__0_0.distcp").write_bytes(b"half written")
    incomplete = checkpoint.checkpoint_dir(tmp_path, 4)
    incomplete.mkdir()
    assert checkpoint.latest_checkpoint(tmp_path) == first
    with pytest.raises(FileNotFoundError, match="not a complete"):
        checkpoint.load(head_state(head, opt), incomplete)
    assert torch.equal(checkpoint.read_class_centers(tmp_path), head.weight.detach())
    with pytest.raises(KeyError, match=r"head\.bias"):
        checkpoint.read_class_centers(tmp_path, key="head.bias")
    with pytest.raises(FileNotFoundError, match="no complete"):
        checkpoint.read_class_centers(tmp_path / "nothing-here")
    # The next save of step 3 clears the leftover and lands whole.
    checkpoint.save(head_state(head, opt), tmp_path, step=3)
    assert not (tmp_path / ".step-00000003.tmp").exists()
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-00000003"


# Margins with buffers: CurricularFace's t and AdaFace's averages are replicated state, the same
# on every rank; a resume on another world size must restore them, not restart them.
STATEFUL = {
    "curricularface": lambda: pfc.CurricularFace(s=8.0, alpha=0.3),
    "adaface": lambda: pfc.AdaFace(s=8.0, t_alpha=0.5),
}


def _stateful(rank: int, world: int, out: str, name: str, part: str) -> None:
    head = pfc.PartialFC(STATEFUL[name](), D, C, dtype=torch.float64, seed=3)
    opt = pfc.SparseSGD([head.weight], lr=0.3, momentum=0.9, weight_decay=1e-3)
    steps = {"all": range(STEPS), "first": range(SPLIT), "second": range(SPLIT, STEPS)}[part]
    restored = None
    if part == "second":
        state = head_state(head, opt)
        checkpoint.load(state, checkpoint.latest_checkpoint(out))
        restore_head_state(head, state)
        restored = [float(b) for b in head.margin.buffers()]
    losses = _train(head, opt, steps, rank, world)
    buffers = [float(b) for b in head.margin.buffers()]
    every: list = [None] * world
    torch.distributed.all_gather_object(every, buffers)
    assert all(b == buffers for b in every), f"buffers differ across ranks: {every}"
    checkpoint.save(head_state(head, opt), out, step=steps[-1] + 1)
    if rank == 0:
        result = {"losses": losses, "buffers": buffers, "restored": restored}
        Path(out, f"{part}.json").write_text(json.dumps(result))


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_margin_buffers_resume_on_another_world_size(tmp_path: Path, name: str) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_ranks(_stateful, 2, str(straight), name, "all")
    run_ranks(_stateful, 2, str(split), name, "first")
    run_ranks(_stateful, 3, str(split), name, "second")
    whole, first, second = (
        json.loads((d / f"{p}.json").read_text())
        for d, p in ((straight, "all"), (split, "first"), (split, "second"))
    )
    assert second["restored"] == first["buffers"], "the buffers come back exactly"
    assert first["buffers"] != [float(b) for b in STATEFUL[name]().buffers()], "they moved"
    got = torch.tensor(first["losses"] + second["losses"])
    assert_close(got, torch.tensor(whole["losses"]), rtol=1e-10, atol=1e-12)
    assert_close(
        torch.tensor(second["buffers"]), torch.tensor(whole["buffers"]), rtol=1e-12, atol=0
    )
