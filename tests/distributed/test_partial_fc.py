"""PartialFC on 1, 2 and 3 gloo ranks against the single-process float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

import partialfc as pfc
from tests import reference as ref
from tests.distributed.harness import run_ranks

C, D, B = 10, 6, 12  # 3 ranks own [0, 4), [4, 7), [7, 10): uneven shards
# Labels on every shard edge (0, 3, 4, 6, 7, 9), repeated classes, one class absent (5... present).
LABELS = torch.tensor([0, 3, 4, 6, 7, 9, 9, 0, 5, 3, 1, 4])
EXACT = dict(rtol=1e-9, atol=1e-12)

CASES: dict[str, tuple] = {
    # name: (margin factory, reference spec)
    "normface": (lambda: pfc.NormFace(s=8.0), ref.Spec("combined", s=8.0)),
    "arcface": (lambda: pfc.ArcFace(s=8.0, m=0.5), ref.Spec("combined", s=8.0, m2=0.5)),
    "cosface": (lambda: pfc.CosFace(s=8.0, m=0.35), ref.Spec("combined", s=8.0, m3=0.35)),
    "sphere_combined": (
        lambda: pfc.CombinedMargin(s=8.0, m1=1.35, m2=0.0, m3=0.0),
        ref.Spec("combined", s=8.0, m1=1.35),
    ),
    "combined": (
        lambda: pfc.CombinedMargin(s=8.0, m1=1.0, m2=0.3, m3=0.2),
        ref.Spec("combined", s=8.0, m2=0.3, m3=0.2),
    ),
    "arcface_large_m": (  # m1*theta + m2 crosses pi for obtuse targets: psi's continuation
        lambda: pfc.CombinedMargin(s=4.0, m1=2.0, m2=0.8),
        ref.Spec("combined", s=4.0, m1=2.0, m2=0.8),
    ),
    "arcface_straight_through": (
        lambda: pfc.ArcFace(s=8.0, m=0.5, straight_through=True),
        ref.Spec("combined", s=8.0, m2=0.5, straight_through=True),
    ),
    "sphereface": (lambda: pfc.SphereFace(), ref.Spec("sphereface")),
    "sphereface_no_lambda": (
        lambda: pfc.SphereFace(m=3, base=0.0, lambda_min=0.0),
        ref.Spec("sphereface", m=3, base=0.0, lambda_min=0.0),
    ),
    "lsoftmax": (
        lambda: pfc.LSoftmax(m=2, base=10.0, lambda_min=0.5),
        ref.Spec("lsoftmax", m=2, base=10.0, lambda_min=0.5),
    ),
    "softmax_bias": (lambda: pfc.Softmax(bias=True), ref.Spec("softmax", bias=True)),
    "softmax_no_bias": (lambda: pfc.Softmax(bias=False), ref.Spec("softmax")),
}


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    return x, w, b


def _head(margin: pfc.Margin, w: torch.Tensor, b: torch.Tensor, **kw) -> pfc.PartialFC:
    head = pfc.PartialFC(margin, embedding_size=D, num_classes=C, dtype=torch.float64, **kw)
    with torch.no_grad():
        lo, n = head.class_start, head.num_local
        head.weight.copy_(w[lo : lo + n])
        if head.bias is not None:
            head.bias.copy_(b[lo : lo + n])
    return head


def _local(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = t.shape[0] // world
    return t[rank * per : (rank + 1) * per]


def _check_margins(rank: int, world: int) -> None:
    x, w, b = _problem()
    for name, (factory, spec) in CASES.items():
        margin = factory()
        head = _head(margin, w, b)
        lo, n = head.class_start, head.num_local
        xl = _local(x, rank, world).clone().requires_grad_()
        for t in (1, 2):  # two steps: the annealed margins must advance lambda
            xl.grad = None
            head.zero_grad(set_to_none=True)
            loss = head(xl, _local(LABELS, rank, world))
            loss.backward()
            r_loss, r_gx, r_gw, r_gb = ref.loss_and_grads(
                spec, x, w, b if spec.bias else None, LABELS, t=t
            )
            msg = f"{name} (step {t}, rank {rank}/{world})"
            assert_close(loss.detach(), r_loss, **EXACT, msg=lambda m, msg=msg: f"{msg} loss: {m}")
            assert_close(
                xl.grad, _local(r_gx, rank, world), **EXACT, msg=lambda m, msg=msg: f"{msg} dX: {m}"
            )
            assert head.weight.grad.is_sparse, msg
            assert_close(
                head.weight.grad.to_dense(),
                r_gw[lo : lo + n],
                **EXACT,
                msg=lambda m, msg=msg: f"{msg} dW: {m}",
            )
            if spec.bias:
                assert head.bias.grad.is_sparse, msg
                assert_close(
                    head.bias.grad.to_dense(),
                    r_gb[lo : lo + n],
                    **EXACT,
                    msg=lambda m, msg=msg: f"{msg} db: {m}",
                )


def _check_filter(rank: int, world: int) -> None:
    x, w, b = _problem(1)
    threshold = 0.2
    spec = ref.Spec("combined", s=8.0, m2=0.5)
    head = _head(pfc.ArcFace(s=8.0, m=0.5), w, b, interclass_filtering_threshold=threshold)
    xl = _local(x, rank, world).clone().requires_grad_()
    loss = head(xl, _local(LABELS, rank, world))
    loss.backward()
    r_loss, r_gx, r_gw, _ = ref.loss_and_grads(spec, x, w, None, LABELS, filter_threshold=threshold)
    plain, *_ = ref.loss_and_grads(spec, x, w, None, LABELS)
    assert not torch.allclose(plain, r_loss), "the filter must change this problem's loss"
    lo, n = head.class_start, head.num_local
    assert_close(loss.detach(), r_loss, **EXACT)
    assert_close(xl.grad, _local(r_gx, rank, world), **EXACT)
    assert_close(head.weight.grad.to_dense(), r_gw[lo : lo + n], **EXACT)


def _check_sampling(rank: int, world: int) -> None:
    x, w, b = _problem(2)
    spec = ref.Spec("combined", s=8.0, m2=0.5)
    rate = 0.5
    labels = torch.tensor([0, 0, 9, 9, 4, 4, 0, 9, 4, 0, 9, 4])  # few positives: sampling matters
    for step in range(3):
        head = _head(pfc.ArcFace(s=8.0, m=0.5), w, b, sample_rate=rate, seed=7)
        head.step = step
        xl = _local(x, rank, world).clone().requires_grad_()
        loss = head(xl, _local(labels, rank, world))
        loss.backward()
        lo, n = head.class_start, head.num_local
        index = head.last_index
        positives = {int(c) - lo for c in labels if lo <= c < lo + n}
        assert positives <= set(index.tolist()), "every positive is kept"
        assert index.numel() == max(len(positives), int(rate * n))
        assert torch.equal(index, index.sort().values) and index.unique().numel() == index.numel()
        # Same (seed, step, rank) -> same sample; a fresh head reproduces it.
        again = _head(pfc.ArcFace(s=8.0, m=0.5), w, b, sample_rate=rate, seed=7)
        again.step = step
        again(xl.detach(), _local(labels, rank, world))
        assert torch.equal(again.last_index, index)
        # Exactly the loss restricted to the union of sampled classes.
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (index + lo).tolist())
        columns = torch.tensor(sorted(c for part in gathered for c in part))
        r_loss, r_gx, r_gw, _ = ref.loss_and_grads(spec, x, w, None, labels, columns=columns)
        assert_close(loss.detach(), r_loss, **EXACT)
        assert_close(xl.grad, _local(r_gx, rank, world), **EXACT)
        grad = head.weight.grad.coalesce()
        assert set(grad.indices()[0].tolist()) <= set(index.tolist()), (
            "only sampled rows get gradient"
        )
        assert_close(grad.to_dense(), r_gw[lo : lo + n], **EXACT)


def _check_bad_inputs(rank: int, world: int) -> None:
    head = pfc.PartialFC(pfc.ArcFace(), embedding_size=D, num_classes=C)
    x = torch.randn(4, D)
    y = torch.zeros(4, dtype=torch.long)

    def expect(error: type, pattern: str, xs: torch.Tensor, ys: torch.Tensor) -> None:
        with pytest.raises(error, match=pattern):
            head(xs, ys)

    bad_label = y.clone()
    bad_label[1] = C if rank == world - 1 else 0
    expect(ValueError, rf"labels must be in \[0, {C}\).*to {C}", x, bad_label)
    negative = y.clone()
    negative[0] = -1 if rank == 0 else 0
    expect(ValueError, r"labels must be in .*from -1", x, negative)
    wide = torch.randn(4, D + 1) if rank == 0 else x
    expect(ValueError, rf"embeddings \(batch, {D}\)|rank 0 passed embeddings", wide, y)
    nan = x.clone()
    if rank == world - 1:
        nan[2, 3] = float("nan")
    expect(ValueError, rf"NaN or Inf \(rank {world - 1}\)", nan, y)
    short = x[:3] if rank == 0 else x
    expect(ValueError, "same batch size", short, y[: short.shape[0]])
    expect(TypeError, "integer tensor", x, y.float())
    # After all that, a good batch still works: no rank was left behind in a collective.
    assert torch.isfinite(head(x, y))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_margin_matches_reference(world: int) -> None:
    run_ranks(_check_margins, world)


@pytest.mark.parametrize("world", [1, 3])
def test_interclass_filtering_matches_reference(world: int) -> None:
    run_ranks(_check_filter, world)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampling_rule_and_restricted_loss(world: int) -> None:
    run_ranks(_check_sampling, world)


def test_bad_inputs_raise_on_every_rank() -> None:
    run_ranks(_check_bad_inputs, 2)
