"""The fused Triton head (``PartialFC(fused=True)``) against the float64 reference.

Without CUDA the kernels run in Triton's interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``), with its small tiles (16): B=37, D=40 and N=75 leave a ragged edge on
every tile dimension, and the class tiles span more than one split.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from partialfc.heads import _fused
from tests import reference as ref
from tests.distributed.test_partial_fc import CASES

pytestmark = pytest.mark.skipif(
    not _fused.triton_available() or not (torch.cuda.is_available() or _fused.interpreting()),
    reason="needs Triton (on CUDA, or its interpreter)",
)

B, D, C = 37, 40, 75
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 1e-4) -> None:
    """float32 against float64: relative to each tensor's own scale."""
    scale = float(want.abs().max()) or 1.0
    assert_close(got.double().cpu(), want, rtol=rel, atol=rel * scale, msg=lambda m: f"{what}: {m}")


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    y[:3] = torch.tensor([0, C - 1, 16])  # first and last class, and a tile edge
    return x, w, b, y


def _head(margin: pfc.Margin, w: torch.Tensor, b: torch.Tensor, **kw) -> pfc.PartialFC:
    head = pfc.PartialFC(margin, D, C, fused=True, validate=False, device=DEVICE, **kw)
    with torch.no_grad():
        head.weight.copy_(w)
        if head.bias is not None:
            head.bias.copy_(b)
    return head


@pytest.mark.parametrize("rate", [1.0, 0.4])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_margin_matches_the_float64_reference(name: str, rate: float) -> None:
    factory, spec = CASES[name]
    x, w, b, y = _problem()
    head = _head(factory(), w, b, sample_rate=rate, seed=3)
    for t in (1, 2):  # two steps: annealed margins advance lambda, sampling draws anew
        xf = x.float().to(DEVICE).requires_grad_()
        head.zero_grad(set_to_none=True)
        loss = head(xf, y.to(DEVICE))
        loss.backward()
        columns = head.last_index.cpu() if rate < 1.0 else None
        r_loss, r_gx, r_gw, r_gb = ref.loss_and_grads(
            spec, x, w, b if spec.bias else None, y, t=t, columns=columns
        )
        what = f"{name}, rate {rate}, step {t}"
        assert loss.dtype == torch.float32
        _close(loss.detach(), r_loss, f"{what}: loss", rel=1e-5)
        _close(xf.grad, r_gx, f"{what}: dX")
        grad = head.weight.grad
        assert grad.is_sparse and grad.is_coalesced(), what
        if columns is not None:
            assert torch.equal(grad.indices()[0].cpu(), columns), "only the sampled rows"
        _close(grad.to_dense(), r_gw, f"{what}: dW")
        if spec.bias:
            assert head.bias.grad.is_sparse
            _close(head.bias.grad.to_dense(), r_gb, f"{what}: db")


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_interclass_filtering_matches_the_reference(rate: float) -> None:
    x, w, b, y = _problem(1)
    spec = ref.Spec("combined", s=8.0, m2=0.5)
    threshold = 0.1
    head = _head(pfc.ArcFace(s=8.0, m=0.5), w, b, sample_rate=rate,
                 interclass_filtering_threshold=threshold)  # fmt: skip
    xf = x.float().to(DEVICE).requires_grad_()
    loss = head(xf, y.to(DEVICE))
    loss.backward()
    columns = head.last_index.cpu() if rate < 1.0 else None
    r_loss, r_gx, r_gw, _ = ref.loss_and_grads(
        spec, x, w, None, y, filter_threshold=threshold, columns=columns
    )
    plain, *_ = ref.loss_and_grads(spec, x, w, None, y, columns=columns)
    assert not torch.allclose(plain, r_loss), "the filter changes this problem's loss"
    _close(loss.detach(), r_loss, "loss", rel=1e-5)
    _close(xf.grad, r_gx, "dX")
    _close(head.weight.grad.to_dense(), r_gw, "dW")


def test_fused_and_unfused_agree_under_bf16_autocast() -> None:
    """bf16 GEMMs, float32 statistics: both paths sit within bf16's rounding of the exact loss
    and gradients, and of each other."""
    x, w, b, y = _problem(2)
    results = []
    for fused in (False, True):
        head = _head(pfc.CosFace(s=32.0, m=0.35), w, b, sample_rate=0.5)
        head.fused = fused
        xf = x.float().to(DEVICE).requires_grad_()
        with torch.autocast(xf.device.type, dtype=torch.bfloat16):
            loss = head(xf, y.to(DEVICE))
        assert loss.dtype == torch.float32
        loss.backward()
        grads = (xf.grad, head.weight.grad.to_dense())
        exact = ref.loss_and_grads(
            ref.Spec("combined", s=32.0, m3=0.35), x, w, None, y, columns=head.last_index.cpu()
        )
        _close(loss.detach(), exact[0], f"fused={fused}: loss", rel=1e-3)
        for got, want, what in zip(grads, exact[1:3], ("dX", "dW"), strict=True):
            _close(got, want, f"fused={fused}: {what}", rel=2e-2)
        results.append(grads)
    for got, want, what in zip(results[1], results[0], ("dX", "dW"), strict=True):
        _close(got, want.double(), f"fused against unfused: {what}", rel=2e-2)


def test_sparse_sgd_steps_and_gradient_accumulation_work_on_fused_gradients() -> None:
    x, w, b, y = _problem(3)
    heads, opts = [], []
    for fused in (False, True):
        head = _head(pfc.ArcFace(s=16.0, m=0.4), w, b, sample_rate=0.5, seed=1)
        head.fused = fused
        heads.append(head)
        opts.append(pfc.SparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4))
    for step in range(3):
        for head, opt in zip(heads, opts, strict=True):
            opt.zero_grad(set_to_none=True)
            for half in (slice(0, 18), slice(18, B)):  # two backwards before one step
                xf = x[half].float().to(DEVICE)
                head(xf, y[half].to(DEVICE)).backward()
            opt.step()
        assert_close(heads[1].weight, heads[0].weight, rtol=1e-5, atol=1e-6, msg=f"step {step}")


def test_fused_option_is_validated() -> None:
    with pytest.raises(ValueError, match="fused must be True, False or 'auto'"):
        pfc.PartialFC(pfc.ArcFace(), 8, 10, fused="yes")
    head = pfc.PartialFC(pfc.ArcFace(), 8, 10, fused=True, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="use fused=False for float64"):
        head(torch.randn(4, 8, dtype=torch.float64, device=DEVICE), torch.zeros(4, dtype=int))


def test_auto_keeps_the_exact_reference_path_for_float64_and_off_cuda() -> None:
    x, w, _, y = _problem(4)
    head = pfc.PartialFC(pfc.ArcFace(s=8.0), D, C, fused="auto", dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(w)
    xd = x.clone().requires_grad_()
    loss = head(xd, y)
    loss.backward()
    r_loss, r_gx, *_ = ref.loss_and_grads(ref.Spec("combined", s=8.0, m2=0.5), x, w, None, y)
    assert_close(loss.detach(), r_loss, rtol=1e-12, atol=1e-12)
    assert_close(xd.grad, r_gx, rtol=1e-10, atol=1e-14)


def test_fused_true_off_cuda_without_the_interpreter_says_what_to_do(monkeypatch) -> None:
    monkeypatch.setattr(_fused, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET=1.*fused='auto'"):
        _fused.check_fused_device(torch.device("cpu"))


def test_kernels_compile_for_hopper_without_a_gpu() -> None:
    """Outside the interpreter: Triton's compiler and ptxas build every kernel for sm_90, and the
    bf16 GEMMs become wgmma instructions (the tensor cores the roofline assumes)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "fused_compile.py"
    out = subprocess.run(
        [sys.executable, str(script), "--first", "--dtypes", "bf16", "--json"],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    assert {r["kernel"] for r in rows} == {"_stats_kernel", "_grad_chunk_kernel"}
    for r in rows:
        assert r["wgmma"] > 0, r
        assert 0 < r["registers"] <= 255 and r["shared_bytes"] <= 227 * 1024, r
