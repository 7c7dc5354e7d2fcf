"""``partialfc.legacy.get_symbol`` against partialfc's torch heads on the same data.

MXNet's values come from a bound executor (forward is_train, backward, grad_req 'write'); the
torch side is ``pfc.PartialFC`` / ``pfc.TripletLoss`` (loss and gradients) and the float64
reference (logits). Everything is float32 on both sides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import partialfc as pfc
from tests.reference import Spec
from tests.reference import logits as reference_logits

mx = pytest.importorskip("mxnet")

from partialfc.legacy import SymbolConfig, get_symbol  # noqa: E402

B, D, C = 12, 16, 40
LOGIT_ATOL = 1e-4  # logits are s*cos with s = 64: 1e-4 is ~2 float32 ulps of 64
LOSS_RTOL = 2e-6
GRAD_TOL = 2e-6  # of the largest gradient entry (|grad fc7_weight| reaches ~10 at s = 64)


def _assert_grad_close(got: np.ndarray, want: np.ndarray, name: str) -> None:
    atol = GRAD_TOL * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)


def _cfg(loss_name: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(
        loss_name=loss_name, num_classes=C, emb_size=D, loss_s=64.0, loss_m1=1.0, loss_m2=0.0,
        loss_m3=0.0, fc7_no_bias=False, fc7_lr_mult=1.0, fc7_wd_mult=1.0, ce_loss=True,
        triplet_alpha=0.3, per_batch_size=B,
    )  # fmt: skip
    base.update(kw)
    return base


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, D)).astype(np.float32)
    w = (0.1 * rng.standard_normal((C, D))).astype(np.float32)
    b = (0.5 * rng.standard_normal(C)).astype(np.float32)
    y = rng.integers(0, C, B)
    return x, w, b, y


def _run_mxnet(cfg: dict[str, object], x, w, b, y) -> dict[str, np.ndarray]:
    """Outputs, logits (the softmax's input) and gradients of the symbol on one batch."""
    sym = get_symbol(cfg, mx.sym.Variable("data"))
    args = {"data": mx.nd.array(x), "softmax_label": mx.nd.array(y)}
    names = sym.list_arguments()
    if "fc7_weight" in names:
        args["fc7_weight"] = mx.nd.array(w)
    if "fc7_bias" in names:
        args["fc7_bias"] = mx.nd.array(b)
    grads = {k: mx.nd.zeros(v.shape) for k, v in args.items() if k != "softmax_label"}
    req = {k: ("null" if k == "softmax_label" else "write") for k in args}
    exe = sym.bind(mx.cpu(), args, args_grad=grads, grad_req=req)
    outs = [o.asnumpy() for o in exe.forward(is_train=True)]
    exe.backward()
    result = {f"out{i}": o for i, o in enumerate(outs)}
    result.update({f"grad_{k}": g.asnumpy() for k, g in grads.items()})
    if cfg["loss_name"] in ("softmax", "margin_softmax"):
        fc7 = sym[1].get_children()[0]  # SoftmaxOutput's data input: the final logits
        fexe = fc7.bind(mx.cpu(), {k: v for k, v in args.items() if k in fc7.list_arguments()})
        result["logits"] = fexe.forward()[0].asnumpy()
    return result


def _run_torch(margin: pfc.Margin, x, w, b, y) -> dict[str, np.ndarray]:
    head = pfc.PartialFC(margin, embedding_size=D, num_classes=C)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
        if head.bias is not None:
            head.bias.copy_(torch.from_numpy(b))
    xt = torch.from_numpy(x).requires_grad_()
    loss = head(xt, torch.from_numpy(y))
    loss.backward()
    out = {
        "loss": loss.detach().numpy(),
        "grad_data": xt.grad.numpy(),
        "grad_fc7_weight": head.weight.grad.to_dense().numpy(),
    }
    if head.bias is not None:
        out["grad_fc7_bias"] = head.bias.grad.to_dense().numpy()
    return out


CASES = {
    "softmax_bias": (dict(loss_name="softmax"), pfc.Softmax(bias=True), Spec("softmax", bias=True)),
    "softmax_nobias": (
        dict(loss_name="softmax", fc7_no_bias=True),
        pfc.Softmax(bias=False),
        Spec("softmax"),
    ),
    "normface": (dict(), pfc.NormFace(s=64.0), Spec("combined", s=64.0)),
    "cosface": (dict(loss_m3=0.35), pfc.CosFace(s=64.0, m=0.35), Spec("combined", m3=0.35)),
    "arcface": (dict(loss_m2=0.5), pfc.ArcFace(s=64.0, m=0.5), Spec("combined", m2=0.5)),
    "combined": (
        dict(loss_m1=1.0, loss_m2=0.3, loss_m3=0.2),
        pfc.CombinedMargin(s=64.0, m1=1.0, m2=0.3, m3=0.2),
        Spec("combined", m2=0.3, m3=0.2),
    ),
    "combined_m1": (
        dict(loss_m1=1.2, loss_m2=0.2, loss_m3=0.1),
        pfc.CombinedMargin(s=64.0, m1=1.2, m2=0.2, m3=0.1),
        Spec("combined", m1=1.2, m2=0.2, m3=0.1),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_softmax_family_matches_torch_head(name: str) -> None:
    overrides, margin, spec = CASES[name]
    cfg = _cfg(overrides.pop("loss_name", "margin_softmax"), **overrides)
    x, w, b, y = _data()
    if isinstance(margin, pfc.CombinedMargin):  # the premise of the comparison: phi <= pi
        cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
            w / np.linalg.norm(w, axis=1, keepdims=True)
        ).T
        phi = margin.m1 * np.arccos(cos[np.arange(B), y]) + margin.m2
        assert phi.max() <= math.pi
    got = _run_mxnet(cfg, x, w, b, y)
    want = _run_torch(margin, x, w, b, y)

    ref = reference_logits(
        spec, torch.from_numpy(x).double(), torch.from_numpy(w).double(),
        torch.from_numpy(b).double() if spec.bias else None, torch.from_numpy(y),
    ).numpy()  # fmt: skip
    np.testing.assert_allclose(got["logits"], ref, rtol=0, atol=LOGIT_ATOL)

    probs = got["out1"]
    mx_loss = -np.log(probs[np.arange(B), y].astype(np.float64)).mean()
    np.testing.assert_allclose(mx_loss, want["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(got["out2"].item(), want["loss"], rtol=LOSS_RTOL)  # ce_loss
    np.testing.assert_array_equal(got["out0"], x)  # BlockGrad(embedding)
    for key in ("grad_data", "grad_fc7_weight", "grad_fc7_bias"):
        if key in want:
            _assert_grad_close(got[key], want[key], key)
        else:
            assert key not in got


def _past_pi_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch whose first half has target angles near pi (ArcFace's phi > pi), the rest not."""
    x, w, b, _ = _data(seed=1)
    y = np.random.default_rng(2).permutation(C)[:B]  # one centre per row: set them freely
    half = B // 2
    w[y[:half]] = -x[:half] * 0.1 + 0.001 * w[y[:half]]  # centre almost opposite the embedding
    w[y[half:]] = x[half:] * 0.1 + 0.08 * w[y[half:]]  # target angles well below pi - m
    return x, w, b, y


def test_arcface_differs_only_past_pi() -> None:
    """insightface's cos(theta + m) turns back up past pi; partialfc's psi keeps decreasing."""
    x, w, b, y = _past_pi_data()
    m = 0.5
    got = _run_mxnet(_cfg("margin_softmax", loss_m2=m), x, w, b, y)
    ref = reference_logits(
        Spec("combined", m2=m), torch.from_numpy(x).double(), torch.from_numpy(w).double(), None,
        torch.from_numpy(y),
    ).numpy()  # fmt: skip
    x64, wy64 = x.astype(np.float64), w[y].astype(np.float64)
    theta = np.arccos(
        np.sum(x64 * wy64, 1) / np.linalg.norm(x64, axis=1) / np.linalg.norm(wy64, axis=1)
    )
    past = theta + m > math.pi
    assert past.any() and (~past).any()
    rows = np.arange(B)
    diff = np.abs(got["logits"][rows, y] - ref[rows, y])
    assert np.all(diff[~past] <= LOGIT_ATOL)
    assert np.all(diff[past] > 1.0)  # not rounding: a different branch of the function
    # insightface's value past pi is the bare s*cos(theta + m), which turned back up (> -s),
    # while partialfc's continuation went on down (< -s). atol: near theta = pi, float32 acos of
    # a cosine near -1 is ill-conditioned, and d logit / d theta is about s*sin(m) = 30 there.
    np.testing.assert_allclose(
        got["logits"][rows, y][past], 64.0 * np.cos(theta[past] + m), rtol=0, atol=1e-2
    )
    assert np.all(got["logits"][rows, y][past] > -64.0)
    assert np.all(ref[rows, y][past] < -64.0)


@pytest.mark.parametrize("angular", [False, True], ids=["triplet", "atriplet"])
def test_triplet_matches_torch(angular: bool) -> None:
    x, _, _, y = _data(seed=3)
    third = B // 3
    # Triplet 0 satisfies the margin (relu is 0 there). Neither pair is exactly (anti)parallel:
    # at cos = +-1 MXNet's unclamped arccos has an infinite derivative (see the test below).
    x[third], x[2 * third] = x[0] + 0.1 * x[third], -x[0] + 0.3 * x[2 * third]
    cfg = _cfg("atriplet" if angular else "triplet", triplet_alpha=0.3)
    got = _run_mxnet(cfg, x, None, None, y)
    xt = torch.from_numpy(x).requires_grad_()
    loss = pfc.TripletLoss(margin=0.3, angular=angular, mining="thirds")(xt)
    loss.backward()
    np.testing.assert_array_equal(got["out1"], y)  # BlockGrad(softmax_label)
    np.testing.assert_allclose(got["out2"].item(), loss.item(), rtol=LOSS_RTOL)
    _assert_grad_close(got["grad_data"], xt.grad.numpy(), "grad_data")
    active = np.abs(xt.grad.numpy()).sum(1) > 0
    assert not active[[0, third, 2 * third]].any() and active.any()


def test_same_params_bind_insightface_names() -> None:
    sym = get_symbol(_cfg("softmax"), mx.sym.Variable("data"))
    assert sym.list_arguments() == ["data", "fc7_weight", "fc7_bias", "softmax_label"]
    assert sym.list_outputs() == [
        "embedding_blockgrad_output", "softmax_output", "ce_loss_output",
    ]  # fmt: skip
    sym = get_symbol(_cfg("margin_softmax", loss_m2=0.5, ce_loss=False), mx.sym.Variable("data"))
    assert sym.list_arguments() == ["data", "fc7_weight", "softmax_label"]
    assert len(sym.list_outputs()) == 2
    attrs = sym.attr_dict()["fc7_weight"]
    assert float(attrs["__lr_mult__"]) == 1.0 and attrs["__shape__"] == str((C, D))


class _Attrs:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


def test_config_as_object_and_missing_field() -> None:
    cfg = _cfg("margin_softmax", loss_m2=0.5)
    sym = get_symbol(_Attrs(**cfg), mx.sym.Variable("data"))
    assert "fc7_weight" in sym.list_arguments()
    del cfg["loss_m3"]
    with pytest.raises(KeyError, match="loss_m3"):
        get_symbol(cfg, mx.sym.Variable("data"))
    with pytest.raises(ValueError, match="loss_name"):
        SymbolConfig.from_any({"loss_name": "sphere"})
    with pytest.raises(ValueError, match="per_batch_size"):
        get_symbol(_cfg("triplet", per_batch_size=10), mx.sym.Variable("data"))


def test_atriplet_identical_pair_is_nan_in_mxnet_only() -> None:
    """Documented difference: insightface's arccos is unclamped, partialfc clamps (rule 2)."""
    x, _, _, y = _data(seed=4)
    x[B // 3] = x[0]  # positive == anchor: cos = 1 (up to rounding)
    got = _run_mxnet(_cfg("atriplet"), x, None, None, y)
    xt = torch.from_numpy(x).requires_grad_()
    pfc.TripletLoss(margin=0.3, angular=True, mining="thirds")(xt).backward()
    assert not np.isfinite(got["grad_data"][0]).all()
    assert torch.isfinite(xt.grad).all()
