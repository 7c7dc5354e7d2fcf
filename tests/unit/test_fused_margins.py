"""The later margins on the fused path: the target-only ones (MagFace, AdaFace, ElasticFace) run
in the kernels and equal the exact reference path; CurricularFace, which reshapes non-target
logits, is refused by ``fused=True`` and sent to the reference path by ``"auto"``."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import partialfc as pfc
from partialfc.heads import _fused
from tests.unit.test_fused import DEVICE, _close

pytestmark = pytest.mark.skipif(
    not _fused.triton_available() or not (torch.cuda.is_available() or _fused.interpreting()),
    reason="needs Triton (on CUDA, or its interpreter)",
)

B, D, C = 20, 24, 40

FUSABLE = {
    "adaface": lambda: pfc.AdaFace(s=8.0, t_alpha=0.5),
    "magface": lambda: pfc.MagFace(s=8.0, easy_margin=False),
    "elasticface_arc_plus": lambda: pfc.ElasticFace(s=8.0, std=0.2, plus=True),
}


def _problem(step: int):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    g.manual_seed(10 + step)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    x[0] = w[5] + 1e-3 * x[0]  # a non-target cosine above AdaFace's clamp 1 - 1e-3
    x = F.normalize(x, dim=1) * torch.linspace(5.0, 150.0, B, dtype=torch.float64)[:, None]
    y = torch.randint(0, C, (B,), generator=g)
    y[:3] = torch.tensor([0, C - 1, 16])  # y[0] = 0: class 5 is a non-target of row 0
    return x, w, y


@pytest.mark.parametrize("rate", [1.0, 0.5])
@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_target_only_margins_run_fused_and_equal_the_reference_path(name: str, rate: float) -> None:
    heads = {}
    for fused, dtype in ((True, torch.float32), (False, torch.float64)):
        kw = dict(sample_rate=rate, seed=2, device=DEVICE, dtype=dtype, validate=False)
        heads[fused] = pfc.PartialFC(FUSABLE[name](), D, C, fused=fused, **kw)
        with torch.no_grad():
            heads[fused].weight.copy_(_problem(0)[1])
    for step in range(2):  # the buffers move between the steps
        x, _, y = _problem(step)
        got, want = {}, {}
        for fused, out in ((True, got), (False, want)):
            head = heads[fused]
            xs = x.to(DEVICE, head.weight.dtype).requires_grad_()
            loss = head(xs, y.to(DEVICE))
            loss.backward()
            out.update(loss=loss.detach(), dx=xs.grad, dw=head.weight.grad.to_dense())
            head.zero_grad(set_to_none=True)
        what = f"{name}, rate {rate}, step {step}"
        _close(got["loss"], want["loss"], f"{what}: loss", rel=1e-5)
        _close(got["dx"], want["dx"], f"{what}: dX")
        _close(got["dw"], want["dw"], f"{what}: dW")
        for a, b in zip(heads[True].margin.buffers(), heads[False].margin.buffers(), strict=True):
            _close(a, b.double(), f"{what}: buffers", rel=1e-6)


def test_curricularface_is_refused_by_fused_true_and_falls_back_with_auto(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"fused=True cannot run CurricularFace.*fused='auto'"):
        pfc.PartialFC(pfc.CurricularFace(), D, C, fused=True)
    monkeypatch.setattr("partialfc.heads.partial_fc.triton_available", lambda: True)
    on_cuda = types.SimpleNamespace(is_cuda=True)  # what _use_fused looks at
    auto = {m: pfc.PartialFC(m, D, C, fused="auto") for m in (pfc.CurricularFace(), pfc.AdaFace())}
    assert [head._use_fused(on_cuda) for head in auto.values()] == [False, True]
