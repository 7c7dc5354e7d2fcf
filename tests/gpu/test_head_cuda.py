"""The head on a GPU: same maths as the CPU reference, bf16 GEMMs under autocast."""

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from tests import reference as ref

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_cuda_float64_matches_reference(rate: float) -> None:
    torch.manual_seed(0)
    head = pfc.PartialFC(
        pfc.ArcFace(s=16.0), 32, 1000, sample_rate=rate, dtype=torch.float64, device="cuda"
    )
    x = torch.randn(64, 32, dtype=torch.float64, device="cuda", requires_grad=True)
    y = torch.randint(0, 1000, (64,), device="cuda")
    loss = head(x, y)
    loss.backward()
    cols = head.last_index.cpu()
    r_loss, r_gx, r_gw, _ = ref.loss_and_grads(
        ref.Spec("combined", s=16.0, m2=0.5),
        x.cpu(),
        head.weight.cpu(),
        None,
        y.cpu(),
        columns=cols,
    )
    assert_close(loss.cpu(), r_loss, rtol=1e-9, atol=1e-12)
    assert_close(x.grad.cpu(), r_gx, rtol=1e-9, atol=1e-12)
    assert_close(head.weight.grad.to_dense().cpu(), r_gw, rtol=1e-9, atol=1e-12)


def test_cuda_bf16_autocast_keeps_float32_statistics() -> None:
    torch.manual_seed(0)
    head = pfc.PartialFC(pfc.CosFace(), 128, 50_000, sample_rate=0.2, device="cuda")
    x = torch.randn(256, 128, device="cuda", requires_grad=True)
    y = torch.randint(0, 50_000, (256,), device="cuda")
    exact = head(x, y)
    head.step -= 1  # the same sample again
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = head(x, y)
    assert mixed.dtype == torch.float32
    assert_close(mixed, exact, rtol=2e-2, atol=2e-2)
    mixed.backward()
    assert torch.isfinite(x.grad).all() and head.weight.grad.dtype == torch.float32
