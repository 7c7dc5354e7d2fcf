"""Sub-centres (K = 3) on 1, 2 and 3 gloo ranks against the single-process float64 reference.

Every angular margin of the registry; with and without sampling; labels on every shard edge;
several steps with a sparse SGD update between them, so the winning sub-centres change and the
stateful margins' buffers move; each rank's rows ``[class_start*K, (class_start + num_local)*K)``
of the global class-major matrix.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.testing import assert_close

import partialfc as pfc
from tests import reference as ref
from tests.distributed.harness import run_ranks

C, K, D, B = 10, 3, 6, 12  # 3 ranks own classes [0, 4), [4, 7), [7, 10): rows x3
LABELS = torch.tensor([0, 3, 4, 6, 7, 9, 9, 0, 5, 3, 1, 4])  # every shard edge, repeats
SPARSE_LABELS = torch.tensor([0, 0, 9, 9, 4, 4, 0, 9, 4, 0, 9, 4])  # few positives: sampling bites
EXACT = dict(rtol=1e-9, atol=1e-12)
SEED, STEPS, LR, S = 5, 3, 2.0, 8.0
MAG = dict(s=S, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0)


def _classic(spec: ref.Spec):
    return lambda x, w, y, st, step: (
        ref.logits(spec, x, w, None, y, t=step + 1, sub_centers=K),
        0.0,
        st,
    )


# name: (margin factory, reference logits (x, w, labels, state, step) -> (z, extra, state), state)
CASES: dict[str, tuple] = {
    "arcface": (lambda: pfc.ArcFace(s=S, m=0.5), _classic(ref.Spec("combined", s=S, m2=0.5)), None),
    "cosface": (
        lambda: pfc.CosFace(s=S, m=0.35),
        _classic(ref.Spec("combined", s=S, m3=0.35)),
        None,
    ),
    "combined": (
        lambda: pfc.CombinedMargin(s=S, m1=1.0, m2=0.3, m3=0.2),
        _classic(ref.Spec("combined", s=S, m2=0.3, m3=0.2)),
        None,
    ),
    "sphereface": (lambda: pfc.SphereFace(), _classic(ref.Spec("sphereface")), None),
    "curricularface": (
        lambda: pfc.CurricularFace(s=S, m=0.5, alpha=0.3),
        lambda x, w, y, st, step: ref.curricularface(x, w, y, st, s=S, m=0.5, alpha=0.3, k=K),
        torch.tensor(0.0, dtype=torch.float64),
    ),
    "adaface": (
        lambda: pfc.AdaFace(s=S, m=0.4, h=0.333, t_alpha=0.5),
        lambda x, w, y, st, step: ref.adaface(x, w, y, st, s=S, m=0.4, h=0.333, t_alpha=0.5, k=K),
        (torch.tensor(20.0, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)),
    ),
    "magface": (
        lambda: pfc.MagFace(**MAG),
        lambda x, w, y, st, step: ref.magface(x, w, y, st, **MAG, easy_margin=True, k=K),
        None,
    ),
    "elasticface_arc_plus": (
        lambda: pfc.ElasticFace(s=S, m=0.5, std=0.2, plus=True),
        lambda x, w, y, st, step: ref.elasticface(
            x, w, y, st, s=S, m=0.5, std=0.2, kind="arc", plus=True, seed=SEED, step=step, k=K
        ),
        None,
    ),
}


def _embeddings(step: int) -> torch.Tensor:
    """(B, D) float64, norms from about 5 to 150 (MagFace's clamp bites at both ends)."""
    g = torch.Generator().manual_seed(60 + step)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    scales = torch.linspace(2.0, 60.0, B, dtype=torch.float64)[torch.randperm(B, generator=g)]
    return F.normalize(x, dim=1) * scales[:, None] * D**0.5


def _centres() -> torch.Tensor:
    """(C*K, D) class-major sub-centres."""
    return torch.randn(C * K, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _winners(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> set[int]:
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()  # (B, C*K)
    return set(cos.view(B, C, K).argmax(2).gather(1, labels[:, None]).view(-1).tolist())


def _check(rank: int, world: int) -> None:
    for rate in (1.0, 0.5):
        for name, case in CASES.items():
            _check_case(rank, world, rate, name, *case)


def _check_case(rank: int, world: int, rate: float, name: str, factory, logits_fn, state) -> None:
    w = _centres()
    labels = LABELS if rate == 1.0 else SPARSE_LABELS
    per = B // world
    mine = slice(rank * per, (rank + 1) * per)
    head = pfc.PartialFC(
        factory(), D, C, sample_rate=rate, seed=SEED, dtype=torch.float64, sub_centers=K
    )
    lo, n = head.class_start * K, head.num_local * K  # this rank's rows of the global matrix
    assert head.weight.shape == (n, D)
    with torch.no_grad():
        head.weight.copy_(w[lo : lo + n])
    opt = pfc.SparseSGD([head.weight], lr=LR, momentum=0.0)
    winners: set[int] = set()
    for step in range(STEPS):
        x = _embeddings(step)
        winners |= _winners(x, w, labels)
        xl = x[mine].clone().requires_grad_()
        opt.zero_grad(set_to_none=True)
        before = head.weight.detach().clone()
        loss = head(xl, labels[mine])
        loss.backward()
        columns = None
        if rate < 1.0:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, (head.last_classes + head.class_start).tolist())
            columns = torch.tensor(sorted(c for part in gathered for c in part))
            rows = (head.last_classes[:, None] * K + torch.arange(K)).view(-1)
            assert torch.equal(head.last_index, rows), "a sampled class brings all its K rows"
        r_loss, r_gx, r_gw, state = ref.stateful_loss_and_grads(
            lambda a, b, c, st: logits_fn(a, b, c, st, step),  # noqa: B023 - used at once
            x, w, labels, state, columns=columns,
        )  # fmt: skip
        msg = f"{name} (rate {rate}, step {step}, rank {rank}/{world})"
        assert_close(loss.detach(), r_loss, **EXACT, msg=lambda m, msg=msg: f"{msg} loss: {m}")
        assert_close(xl.grad, r_gx[mine], **EXACT, msg=lambda m, msg=msg: f"{msg} dX: {m}")
        grad = head.weight.grad
        assert grad.is_sparse, msg
        assert set(grad.coalesce().indices()[0].tolist()) <= set(head.last_index.tolist()), msg
        assert_close(
            grad.to_dense(), r_gw[lo : lo + n], **EXACT, msg=lambda m, msg=msg: f"{msg} dW: {m}"
        )
        opt.step()
        unused = torch.ones(n, dtype=torch.bool)
        unused[head.last_index] = False
        assert torch.equal(head.weight.detach()[unused], before[unused]), f"{msg}: unused rows"
        w = w - LR * r_gw  # momentum 0, no decay: the sparse step is the dense one
        assert_close(head.weight.detach(), w[lo : lo + n], **EXACT, msg=msg)
        if state is not None:
            expected = [float(v) for v in (state if isinstance(state, tuple) else (state,))]
            buffers = [float(b) for b in head.margin.buffers()]
            assert_close(torch.tensor(buffers), torch.tensor(expected), **EXACT, msg=msg)
    assert winners == set(range(K)), f"{name}: the targets' closest sub-centres vary: {winners}"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sub_centres_match_the_float64_reference_sharded(world: int) -> None:
    run_ranks(_check, world)
