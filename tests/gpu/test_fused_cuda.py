"""The fused Triton head compiled for a real GPU, against the unfused path and float64."""

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from tests import reference as ref

pytestmark = pytest.mark.gpu
triton = pytest.importorskip("triton")


def _heads(margin_factory, classes: int, dim: int, **kw) -> list[pfc.PartialFC]:
    heads = []
    for fused in (False, True):
        torch.manual_seed(0)
        heads.append(
            pfc.PartialFC(margin_factory(), dim, classes, device="cuda", fused=fused, **kw)
        )
    return heads


@pytest.mark.parametrize("rate", [1.0, 0.3])
@pytest.mark.parametrize(
    "factory", [lambda: pfc.ArcFace(s=64.0), lambda: pfc.SphereFace(), lambda: pfc.Softmax()]
)
def test_fused_matches_float64_in_float32(factory, rate: float) -> None:
    """Ragged sizes on every tile edge; IEEE float32 GEMMs (TF32 off, as torch's default)."""
    batch, dim, classes = 300, 200, 5_003
    reference, fused = _heads(factory, classes, dim, sample_rate=rate)
    x = torch.randn(batch, dim, device="cuda")
    y = torch.randint(0, classes, (batch,), device="cuda")
    out = []
    for head in (reference, fused):
        xi = x.clone().requires_grad_()
        loss = head(xi, y)
        loss.backward()
        out.append((loss.detach(), xi.grad, head.weight.grad.to_dense(), head.last_index))
    (l0, gx0, gw0, i0), (l1, gx1, gw1, i1) = out
    assert torch.equal(i0, i1), "the same sample"
    assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert_close(gx1, gx0, rtol=1e-4, atol=1e-4 * float(gx0.abs().max()))
    assert_close(gw1, gw0, rtol=1e-4, atol=1e-4 * float(gw0.abs().max()))


def test_fused_bf16_autocast_and_float64_reference() -> None:
    batch, dim, classes = 1024, 512, 20_000
    reference, fused = _heads(lambda: pfc.ArcFace(s=64.0, m=0.5), classes, dim, sample_rate=0.5)
    x = torch.randn(batch, dim, device="cuda")
    y = torch.randint(0, classes, (batch,), device="cuda")
    results = []
    for head in (reference, fused):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = head(xi, y)
        loss.backward()
        results.append((loss.detach(), xi.grad))
    columns = fused.last_index.cpu()
    exact = ref.loss_and_grads(
        ref.Spec("combined", s=64.0, m2=0.5), x.cpu(), fused.weight.detach().cpu(), None,
        y.cpu(), columns=columns,
    )  # fmt: skip
    for loss, gx in results:
        assert abs(float(loss) - float(exact[0])) < 1e-2 * float(exact[0])
        assert_close(
            gx.double().cpu(), exact[1], rtol=5e-2, atol=5e-2 * float(exact[1].abs().max())
        )


def _step_bytes(head: pfc.PartialFC, opt: pfc.SparseSGD | None, batch: int, dim: int) -> int:
    """Transient CUDA memory of one bf16 step (forward, backward and the optimizer's step)."""
    x = torch.randn(batch, dim, device="cuda", requires_grad=True)
    y = torch.randint(0, head.num_local, (batch,), device="cuda")
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = head(x, y)
    loss.backward()
    if opt is not None:
        opt.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - held


def test_fused_step_memory_is_a_fraction_of_the_unfused_one() -> None:
    """No (B, N) logits: a step's transient memory is the sparse gradient plus small buffers."""
    batch, dim, classes = 1024, 512, 125_000
    peaks = []
    for fused in (False, True):
        head = pfc.PartialFC(pfc.ArcFace(), dim, classes, device="cuda", fused=fused,
                             validate=False)  # fmt: skip
        peaks.append(_step_bytes(head, None, batch, dim))
        del head
    logits_bytes = batch * classes * 4
    assert peaks[0] > logits_bytes, "the unfused path holds the logits"
    assert peaks[1] < peaks[0] / 2 and peaks[1] < logits_bytes


def test_fused_update_step_memory_is_at_most_a_quarter_of_the_unfused_one() -> None:
    """The issue's memory target at 125k rows: with the update inside backward no (N, D) dW
    values exist, so the step holds a chunk of logit gradient and small buffers."""
    batch, dim, classes = 1024, 512, 125_000
    steps = {}
    for mode in ("unfused", "fused-update"):
        torch.manual_seed(0)
        head = pfc.PartialFC(pfc.ArcFace(), dim, classes, device="cuda", validate=False,
                             fused=mode != "unfused")  # fmt: skip
        opt = pfc.SparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
        if mode == "fused-update":
            head.fuse_update(opt)
        _step_bytes(head, opt, batch, dim)  # creates the momentum buffer
        steps[mode] = _step_bytes(head, opt, batch, dim)
        del head, opt
    assert steps["fused-update"] <= 0.25 * steps["unfused"], steps


def test_fused_update_matches_backward_then_step_on_cuda() -> None:
    batch, dim, classes = 300, 200, 40_003
    heads, opts = [], []
    for update in (False, True):
        torch.manual_seed(0)
        head = pfc.PartialFC(pfc.ArcFace(), dim, classes, device="cuda", fused=True,
                             sample_rate=0.5, validate=False)  # fmt: skip
        opt = pfc.SparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
        if update:
            head.fuse_update(opt)
        heads.append(head)
        opts.append(opt)
    for _ in range(3):
        x = torch.randn(batch, dim, device="cuda")
        y = torch.randint(0, classes, (batch,), device="cuda")
        for head, opt in zip(heads, opts, strict=True):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = head(x, y)
            loss.backward()
            opt.step()
    assert heads[1].weight.grad is None
    assert_close(heads[1].weight, heads[0].weight)
    assert_close(
        opts[1].state[heads[1].weight]["momentum_buffer"],
        opts[0].state[heads[0].weight]["momentum_buffer"],
    )
