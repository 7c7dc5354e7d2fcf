"""The fused head on 2 and 3 gloo ranks against the single-process float64 reference.

The ranks combine the kernels' (max, sum-exp, target) with the same single collective as the
reference path; uneven shards, labels on shard edges, sampling and every margin are covered.
Without CUDA the kernels run in Triton's interpreter (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

import partialfc as pfc
from partialfc.heads import _fused
from tests import reference as ref
from tests.distributed.harness import run_ranks
from tests.distributed.test_partial_fc import CASES, LABELS, C, D, _local, _problem

pytestmark = pytest.mark.skipif(
    not _fused.triton_available() or not (torch.cuda.is_available() or _fused.interpreting()),
    reason="needs Triton (on CUDA, or its interpreter)",
)


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = float(want.abs().max()) or 1.0
    assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{what}: {m}")


def _check(rank: int, world: int, rate: float) -> None:
    x, w, b = _problem()
    for name, (factory, spec) in CASES.items():
        head = pfc.PartialFC(factory(), D, C, sample_rate=rate, seed=5, fused=True)
        lo, n = head.class_start, head.num_local
        with torch.no_grad():
            head.weight.copy_(w[lo : lo + n])
            if head.bias is not None:
                head.bias.copy_(b[lo : lo + n])
        for t in (1, 2):
            xl = _local(x, rank, world).float().requires_grad_()
            head.zero_grad(set_to_none=True)
            loss = head(xl, _local(LABELS, rank, world))
            loss.backward()
            columns = None
            if rate < 1.0:
                gathered: list = [None] * world
                dist.all_gather_object(gathered, (head.last_index + lo).tolist())
                columns = torch.tensor(sorted(c for part in gathered for c in part))
            r_loss, r_gx, r_gw, r_gb = ref.loss_and_grads(
                spec, x, w, b if spec.bias else None, LABELS, t=t, columns=columns
            )
            what = f"{name} step {t} rank {rank}/{world}"
            _close(loss.detach(), r_loss, f"{what} loss")
            _close(xl.grad, _local(r_gx, rank, world), f"{what} dX")
            _close(head.weight.grad.to_dense(), r_gw[lo : lo + n], f"{what} dW")
            if spec.bias:
                _close(head.bias.grad.to_dense(), r_gb[lo : lo + n], f"{what} db")


@pytest.mark.parametrize(("world", "rate"), [(2, 1.0), (3, 1.0), (3, 0.5)])
def test_fused_on_gloo_ranks_matches_the_reference(world: int, rate: float) -> None:
    run_ranks(_check, world, rate)


def _check_update(rank: int, world: int) -> None:
    """fuse_update on the ranks: each shard and its momentum follow float64 SGD on the full
    matrix (at rate 1 every row is used each step, so the lazy rows update like dense SGD)."""
    x, w, _ = _problem()
    factory, spec = CASES["arcface"]
    lr, momentum, wd = 0.5, 0.9, 1e-2
    head = pfc.PartialFC(factory(), D, C, seed=5, fused=True)
    lo, n = head.class_start, head.num_local
    with torch.no_grad():
        head.weight.copy_(w[lo : lo + n])
    opt = pfc.SparseSGD([head.weight], lr=lr, momentum=momentum, weight_decay=wd)
    head.fuse_update(opt)
    w_ref, buf = w.clone(), torch.zeros_like(w)
    for t in (1, 2, 3):
        opt.zero_grad(set_to_none=True)
        loss = head(_local(x, rank, world).float(), _local(LABELS, rank, world))
        loss.backward()
        opt.step()
        assert head.weight.grad is None
        r_loss, _, r_gw, _ = ref.loss_and_grads(spec, x, w_ref, None, LABELS, t=t)
        _close(loss.detach(), r_loss, f"step {t} rank {rank}/{world} loss")
        buf = momentum * buf + r_gw + wd * w_ref
        w_ref = w_ref - lr * buf
        what = f"step {t} rank {rank}/{world}"
        _close(head.weight.detach(), w_ref[lo : lo + n], f"{what} weight")
        _close(opt.state[head.weight]["momentum_buffer"], buf[lo : lo + n], f"{what} momentum")
    assert float((w_ref - w).abs().max()) > 1e-2, "the steps moved the centres"


def test_fused_update_on_gloo_ranks_follows_float64_sgd() -> None:
    run_ranks(_check_update, 3)
