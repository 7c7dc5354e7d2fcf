"""Sub-centres: what the head and the config refuse, and what does not depend on the world size."""

from __future__ import annotations

import pytest
import torch

import partialfc as pfc
from partialfc.train.config import Config, ConfigError

TOML = """
[data]
root = "/data/ms1mv3"

[model]
backbone = "iresnet50"

[head]
margin = "arcface"
sub_centers = 3
"""


@pytest.mark.parametrize(
    "margin", [pfc.Softmax(bias=True), pfc.Softmax(bias=False), pfc.LSoftmax()]
)
def test_margins_without_normalised_centres_are_refused(margin: pfc.Margin) -> None:
    with pytest.raises(ValueError, match=r"sub_centers = 3 needs an angular margin.*raw dot"):
        pfc.PartialFC(margin, 4, 10, sub_centers=3)


@pytest.mark.parametrize("k", [0, -1, 2.0, True, 256])
def test_bad_counts_are_refused(k) -> None:
    with pytest.raises(ValueError, match="sub_centers must be"):
        pfc.PartialFC(pfc.ArcFace(), 4, 10, sub_centers=k)


def test_fused_true_refuses_and_auto_falls_back() -> None:
    with pytest.raises(ValueError, match="fused=True cannot run sub-centres"):
        pfc.PartialFC(pfc.ArcFace(), 4, 10, sub_centers=3, fused=True)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 9, 9, 5])
    auto = pfc.PartialFC(pfc.ArcFace(s=8.0), 4, 10, sub_centers=3, fused="auto", seed=1)
    off = pfc.PartialFC(pfc.ArcFace(s=8.0), 4, 10, sub_centers=3, fused=False, seed=1)
    assert torch.equal(auto(x, y), off(x, y))


def test_rows_are_class_major_and_initialised_independently_of_k_one() -> None:
    """Row c*K + k is global row c*K + k of the block-seeded initialisation: K = 3 on 10 classes
    starts from the same matrix as 30 classes with K = 1."""
    three = pfc.PartialFC(pfc.ArcFace(), 4, 10, sub_centers=3, seed=7)
    flat = pfc.PartialFC(pfc.ArcFace(), 4, 30, seed=7)
    assert three.weight.shape == (30, 4)
    assert torch.equal(three.weight, flat.weight)
    assert three.num_local == 10 and three.get_extra_state()["sub_centers"] == 3


def test_the_class_cosine_is_the_maximum_over_its_rows() -> None:
    """With NormFace (no margin) the loss is plain cross-entropy over max-over-K cosines."""
    head = pfc.PartialFC(pfc.NormFace(s=4.0), 3, 2, sub_centers=2, dtype=torch.float64)
    with torch.no_grad():  # class 0: rows (1,0,0), (0,1,0); class 1: (0,0,1), (-1,0,0)
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]))
    x = torch.tensor([[1.2, 1.6, 0.0]], dtype=torch.float64)  # cosines 0.6, 0.8 | 0, -0.6
    loss = head(x, torch.tensor([0]))
    expected = -torch.log_softmax(torch.tensor([4 * 0.8, 0.0], dtype=torch.float64), 0)[0]
    assert torch.allclose(loss, expected)
    loss.backward()
    rows = head.weight.grad.coalesce()
    changed = rows.indices()[0][rows.values().abs().sum(1) > 0].tolist()
    assert changed == [1, 2], "the gradient reaches only the winning row of each class"


def test_config_takes_sub_centers(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    assert Config.load(path).head.sub_centers == 3
    assert Config.load(path, ["--head.sub_centers", "1"]).head.sub_centers == 1


@pytest.mark.parametrize(
    ("head", "match"),
    [
        ("sub_centers = 0", r"head\.sub_centers: must be an integer from 1 to 255, got 0"),
        ("sub_centers = 2.5", r"head\.sub_centers: expected int, got 2.5"),
        ('sub_centers = 3\nmargin = "softmax"', r"head\.sub_centers: needs an angular margin"),
        ('sub_centers = 3\nfused = "on"', r"head\.sub_centers: has no fused kernel"),
        ('sub_centers = 3\ninit = "class_means"', r"head\.sub_centers: .*class_means"),
    ],
)
def test_config_refusals_name_the_field(tmp_path, head: str, match: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(TOML.split("[head]")[0] + "[head]\n" + head + "\n")
    with pytest.raises(ConfigError, match=match):
        Config.load(path)


def test_the_interclass_filter_applies_to_the_class_cosines() -> None:
    """The filter zeroes non-target class cosines (the maxima) above the threshold."""
    from tests import reference as ref

    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    w = torch.randn(4 * 3, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    head = pfc.PartialFC(
        pfc.ArcFace(s=8.0), 5, 4, sub_centers=3, dtype=torch.float64,
        interclass_filtering_threshold=0.2,
    )  # fmt: skip
    with torch.no_grad():
        head.weight.copy_(w)
    xl = x.clone().requires_grad_()
    loss = head(xl, y)
    loss.backward()
    spec = ref.Spec("combined", s=8.0, m2=0.5)
    r_loss, r_gx, r_gw, _ = ref.loss_and_grads(
        spec, x, w, None, y, filter_threshold=0.2, sub_centers=3
    )
    plain, *_ = ref.loss_and_grads(spec, x, w, None, y, sub_centers=3)
    assert not torch.allclose(plain, r_loss), "the filter must bite on this problem"
    exact = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss.detach(), r_loss, **exact)
    torch.testing.assert_close(xl.grad, r_gx, **exact)
    torch.testing.assert_close(head.weight.grad.to_dense(), r_gw, **exact)


def test_subcenter_clean_refuses_bad_input_in_one_line(tmp_path, capsys) -> None:
    from partialfc.cli import main

    args = ["subcenter-clean", str(tmp_path / "run"), str(tmp_path / "data"), str(tmp_path / "o")]
    assert main([*args, "--max-angle", "0"]) == 2
    assert "--max-angle must be in (0, 180] degrees, got 0" in capsys.readouterr().err
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RUN: ") and str(tmp_path / "run") in err
