"""``PartialFC.fuse_update``: the fused backward applies SparseSGD or SparseAdamW to each chunk
of dW rows.

The claim: the centres and their optimizer state end exactly where ``backward(); step()`` puts them,
step after step, while the step never holds the (N, D) values of the sparse gradient. Without
CUDA the kernels run in Triton's interpreter, whose class chunks are 32 rows: C = 75 gives three
chunks, the last one ragged.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from partialfc.heads import _fused
from tests.distributed.test_partial_fc import CASES
from tests.unit.test_benchmark_memory import load_head_benchmark

pytestmark = pytest.mark.skipif(
    not _fused.triton_available() or not (torch.cuda.is_available() or _fused.interpreting()),
    reason="needs Triton (on CUDA, or its interpreter)",
)

B, D, C = 37, 40, 75
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPTIMIZERS = {
    "momentum_wd": (pfc.SparseSGD, dict(lr=0.5, momentum=0.9, weight_decay=5e-2)),
    "nesterov": (pfc.SparseSGD, dict(lr=0.3, momentum=0.8, nesterov=True)),
    "dampening": (pfc.SparseSGD, dict(lr=0.3, momentum=0.9, dampening=0.5, weight_decay=1e-2)),
    "plain": (pfc.SparseSGD, dict(lr=0.7)),
    # AdamW's step count: the chunks of one backward are one step (three chunks here)
    "adamw": (pfc.SparseAdamW, dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)),
}


def _pair(name: str, rate: float, optimizer: tuple, classes: int = C, dim: int = D):
    """Two identical fused heads with their optimizers; the second updates inside backward."""
    factory, _ = CASES[name]
    opt_class, opt_kw = optimizer
    heads, opts = [], []
    for _ in range(2):
        head = pfc.PartialFC(
            factory(), dim, classes, sample_rate=rate, seed=5, fused=True, validate=False,
            device=DEVICE, init_std=0.3,
        )  # fmt: skip
        params = [p for p in (head.weight, head.bias) if p is not None]
        heads.append(head)
        opts.append(opt_class(params, **opt_kw))
    heads[1].fuse_update(opts[1])
    return heads, opts


def _step(head, opt, x, y):
    opt.zero_grad(set_to_none=True)
    xf = x.clone().requires_grad_()
    loss = head(xf, y)
    loss.backward()
    weight_grad = head.weight.grad
    opt.step()
    return loss.detach(), xf.grad, weight_grad


def _same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert_close(got, want, msg=lambda m: f"{what}: {m}")


CASES_UPDATE = [("arcface", rate, opt) for rate in (1.0, 0.4) for opt in sorted(OPTIMIZERS)] + [
    (name, rate, "momentum_wd")
    for name in ("cosface", "sphereface", "softmax_bias")
    for rate in (1.0, 0.4)
]


@pytest.mark.parametrize(("name", "rate", "opt_name"), CASES_UPDATE)
def test_update_in_backward_equals_backward_then_step(name: str, rate: float, opt_name: str):
    (plain, fused), (opt_plain, opt_fused) = _pair(name, rate, OPTIMIZERS[opt_name])
    start = plain.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    for t in range(3):  # momentum carries over; sampling draws anew; lambda anneals
        x = torch.randn(B, D, generator=g).to(DEVICE)
        y = torch.randint(0, C, (B,), generator=g).to(DEVICE)
        loss_a, gx_a, gw_a = _step(plain, opt_plain, x, y)
        loss_b, gx_b, gw_b = _step(fused, opt_fused, x, y)
        what = f"{name}, rate {rate}, {opt_name}, step {t}"
        assert gw_a is not None and gw_a.is_sparse, what
        assert gw_b is None, f"{what}: no dW is stored"
        assert torch.equal(plain.last_index, fused.last_index), what
        _same(loss_b, loss_a, f"{what}: loss")
        _same(gx_b, gx_a, f"{what}: dX")
        _same(fused.weight, plain.weight, f"{what}: weight")
        if plain.bias is not None:
            _same(fused.bias, plain.bias, f"{what}: bias")
        state_a, state_b = opt_plain.state[plain.weight], opt_fused.state[fused.weight]
        assert state_a.keys() == state_b.keys(), what
        for key in state_a:
            _same(state_b[key], state_a[key], f"{what}: {key}")
    moved = float((plain.weight.detach() - start).abs().amax())
    assert moved > 1e-3, "the steps moved the centres"


def test_a_non_finite_loss_updates_nothing():
    (_, head), (_, opt) = _pair("arcface", 1.0, OPTIMIZERS["momentum_wd"])
    before = head.weight.detach().clone()
    x = torch.randn(B, D).to(DEVICE)
    x[4, 7] = float("nan")
    loss, _, weight_grad = _step(head, opt, x, torch.randint(0, C, (B,)).to(DEVICE))
    assert not torch.isfinite(loss)
    assert weight_grad is None
    assert torch.equal(head.weight.detach(), before)
    assert "momentum_buffer" not in opt.state[head.weight]


@pytest.mark.skipif(DEVICE != "cpu", reason="counts CPU allocations")
def test_the_step_never_holds_the_gradient_values():
    classes, dim, batch = 1024, 256, 8  # dW values: 1 MiB of float32, the step's largest array
    values_bytes = classes * dim * 4
    step_bytes = load_head_benchmark()._cpu_step_bytes
    (plain, fused), (opt_plain, opt_fused) = _pair(
        "arcface", 1.0, OPTIMIZERS["momentum_wd"], classes=classes, dim=dim
    )
    x = torch.randn(batch, dim)
    y = torch.randint(0, classes, (batch,))
    for head, opt in ((plain, opt_plain), (fused, opt_fused)):  # momentum buffers exist after
        _step(head, opt, x, y)
    held = {}
    for key, head, opt in (("plain", plain, opt_plain), ("fused", fused, opt_fused)):
        held[key] = step_bytes(lambda head=head, opt=opt: _step(head, opt, x, y))
    assert held["plain"] >= values_bytes, held
    assert held["fused"] < values_bytes / 2, held
    assert_close(fused.weight, plain.weight)


def test_fuse_update_refuses_what_it_cannot_do():
    reference = pfc.PartialFC(pfc.ArcFace(), 8, 10, fused=False)
    with pytest.raises(ValueError, match="fused=True"):
        reference.fuse_update(pfc.SparseSGD([reference.weight], lr=0.1))
    head = pfc.PartialFC(pfc.ArcFace(), 8, 10, fused=True, device=DEVICE)
    with pytest.raises(ValueError, match="SparseSGD"):
        head.fuse_update(torch.optim.SGD([head.weight], lr=0.1))
    other = torch.nn.Parameter(torch.zeros(10, 8))
    with pytest.raises(ValueError, match="does not hold"):
        head.fuse_update(pfc.SparseSGD([other], lr=0.1))
    with pytest.raises(ValueError, match="not a parameter"):
        pfc.SparseSGD([other], lr=0.1).update_rows(head.weight, slice(0, 2), torch.ones(2, 8))
    opt = pfc.SparseSGD([head.weight], lr=0.1)
    head.fuse_update(opt)
    head.fuse_update(None)  # off again: backward stores the sparse gradient
    head(torch.randn(4, 8, device=DEVICE), torch.arange(4, device=DEVICE)).backward()
    assert head.weight.grad is not None and head.weight.grad.is_sparse
