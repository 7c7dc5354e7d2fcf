import math

import pytest
import torch

import partialfc as pfc
from partialfc.margins import COS_EPS, annealed_lambda, combined_psi


def test_psi_reduces_to_the_classic_margins() -> None:
    theta = torch.tensor([0.1, 0.7, 1.3, 2.0], dtype=torch.float64)
    cos = torch.cos(theta)
    torch.testing.assert_close(combined_psi(cos, 1.0, 0.5, 0.0), torch.cos(theta + 0.5))  # ArcFace
    torch.testing.assert_close(combined_psi(cos, 1.0, 0.0, 0.35), cos - 0.35)  # CosFace
    torch.testing.assert_close(combined_psi(cos, 1.0, 0.0, 0.0), cos)  # NormFace


def test_psi_continues_past_pi_as_sphereface() -> None:
    # m1 = 4, theta = 1: phi = 4 lies in [pi, 2pi): k = 1, psi = -cos(4) - 2.
    cos = torch.tensor([math.cos(1.0)], dtype=torch.float64)
    torch.testing.assert_close(
        combined_psi(cos, 4.0, 0.0, 0.0), torch.tensor([-math.cos(4.0) - 2.0], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "m1,m2,m3", [(1, 0.5, 0), (4, 0, 0), (1.35, 0, 0), (1, 0.3, 0.2), (2, 0.8, 0.1)]
)
def test_psi_is_continuous_and_decreasing_in_theta(m1: float, m2: float, m3: float) -> None:
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    psi = combined_psi(torch.cos(theta), m1, m2, m3)
    steps = psi[1:] - psi[:-1]
    assert (steps <= 1e-12).all(), "monotone non-increasing"
    assert steps.abs().max() < 1e-2, "no jumps"


def test_cosines_are_clamped_before_acos() -> None:
    cos = torch.tensor([1.0, -1.0, 1.0 + 1e-9], dtype=torch.float64, requires_grad=True)
    psi = combined_psi(cos, 1.0, 0.5, 0.0)
    psi.sum().backward()
    assert torch.isfinite(cos.grad).all()
    torch.testing.assert_close(
        psi[0], torch.cos(torch.acos(torch.tensor(1 - COS_EPS, dtype=torch.float64)) + 0.5)
    )


def test_straight_through_has_the_margin_value_and_the_plain_gradient() -> None:
    x = torch.nn.functional.normalize(
        torch.randn(5, 4, dtype=torch.float64), dim=1
    ).requires_grad_()
    w = torch.randn(5, 4, dtype=torch.float64)
    exact = pfc.ArcFace(s=10.0, m=0.5)(x, w)
    st = pfc.ArcFace(s=10.0, m=0.5, straight_through=True)(x, w)
    torch.testing.assert_close(st, exact)
    (g_st,) = torch.autograd.grad(st.sum(), x)
    plain = 10.0 * (x * torch.nn.functional.normalize(w, dim=1)).sum(1)
    (g_plain,) = torch.autograd.grad(plain.sum(), x)
    torch.testing.assert_close(g_st, g_plain)


def test_lambda_annealing_counts_forward_calls_and_survives_state_dict() -> None:
    margin = pfc.SphereFace(m=4, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0)
    x, w = torch.randn(3, 4), torch.randn(3, 4)
    for _ in range(3):
        margin(x, w)
    assert margin.iteration == 3
    assert margin.current_lambda() == pytest.approx(1000.0 / (1 + 0.12 * 3))
    restored = pfc.SphereFace()
    restored.load_state_dict(margin.state_dict())
    assert restored.iteration == 3
    assert annealed_lambda(10**9, 1000.0, 0.12, 1.0, 5.0) == 5.0, "floored at lambda_min"


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: pfc.CombinedMargin(m1=0.5), "m1"),
        (lambda: pfc.CombinedMargin(m2=-0.1), "m2"),
        (lambda: pfc.CosFace(m=-1), "m must be >= 0"),
        (lambda: pfc.ArcFace(s=0), "s must be"),
        (lambda: pfc.SphereFace(m=2.5), "positive integer"),
        (lambda: pfc.LSoftmax(base=-1), "base"),
    ],
)
def test_bad_margin_parameters(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()
