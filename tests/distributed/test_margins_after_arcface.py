"""CurricularFace, AdaFace, MagFace and ElasticFace on 1, 2 and 3 gloo ranks against the
single-process float64 references of tests/reference.py (their official code's operations).

Several steps each, so that the buffers (CurricularFace's t, AdaFace's averages) move; with and
without sampling; labels on every shard edge; buffers bit-identical on every rank.
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

C, D, B = 10, 6, 12  # 3 ranks own [0, 4), [4, 7), [7, 10)
LABELS = torch.tensor([0, 3, 4, 6, 7, 9, 9, 0, 5, 3, 1, 4])  # every shard edge, repeats
SPARSE_LABELS = torch.tensor([0, 0, 9, 9, 4, 4, 0, 9, 4, 0, 9, 4])  # few positives: sampling bites
EXACT = dict(rtol=1e-9, atol=1e-12)
SEED, STEPS = 5, 3
S = 8.0

MAG = dict(s=S, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0)
# name: (margin factory, reference logits (x, w, labels, state, step), initial reference state)
CASES: dict[str, tuple] = {
    "curricularface": (
        lambda: pfc.CurricularFace(s=S, m=0.5, alpha=0.3),
        lambda x, w, y, st, step: ref.curricularface(x, w, y, st, s=S, m=0.5, alpha=0.3),
        torch.tensor(0.0, dtype=torch.float64),
    ),
    "adaface": (
        lambda: pfc.AdaFace(s=S, m=0.4, h=0.333, t_alpha=0.5),
        lambda x, w, y, st, step: ref.adaface(x, w, y, st, s=S, m=0.4, h=0.333, t_alpha=0.5),
        (torch.tensor(20.0, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)),
    ),
    "magface": (
        lambda: pfc.MagFace(**MAG),
        lambda x, w, y, st, step: ref.magface(x, w, y, st, **MAG, easy_margin=True),
        None,
    ),
    "magface_hard": (
        lambda: pfc.MagFace(**MAG, easy_margin=False),
        lambda x, w, y, st, step: ref.magface(x, w, y, st, **MAG, easy_margin=False),
        None,
    ),
    "elasticface_arc": (
        lambda: pfc.ElasticFace(s=S, m=0.5, std=0.05),
        lambda x, w, y, st, step: ref.elasticface(
            x, w, y, st, s=S, m=0.5, std=0.05, kind="arc", plus=False, seed=SEED, step=step
        ),
        None,
    ),
    "elasticface_arc_plus": (
        lambda: pfc.ElasticFace(s=S, m=0.5, std=0.2, plus=True),
        lambda x, w, y, st, step: ref.elasticface(
            x, w, y, st, s=S, m=0.5, std=0.2, kind="arc", plus=True, seed=SEED, step=step
        ),
        None,
    ),
    "elasticface_cos_plus": (
        lambda: pfc.ElasticFace(s=S, m=0.35, std=0.2, kind="cos", plus=True),
        lambda x, w, y, st, step: ref.elasticface(
            x, w, y, st, s=S, m=0.35, std=0.2, kind="cos", plus=True, seed=SEED, step=step
        ),
        None,
    ),
}


def _embeddings(step: int) -> torch.Tensor:
    """(B, D) float64 with norms from about 5 to 150: MagFace's clamp bites at both ends. Row 0
    (class 0) points almost exactly at class 1's centre: a non-target cosine above AdaFace's
    clamp 1 - 1e-3, and a hard negative for CurricularFace."""
    g = torch.Generator().manual_seed(40 + step)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    x[0] = _centres()[1] + 1e-3 * x[0]
    scales = torch.linspace(2.0, 60.0, B, dtype=torch.float64)[torch.randperm(B, generator=g)]
    return F.normalize(x, dim=1) * scales[:, None] * D**0.5


def _centres() -> torch.Tensor:
    return torch.randn(C, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _head(margin: pfc.Margin, w: torch.Tensor, rate: float) -> pfc.PartialFC:
    head = pfc.PartialFC(
        margin, embedding_size=D, num_classes=C, sample_rate=rate, seed=SEED, dtype=torch.float64
    )
    with torch.no_grad():
        head.weight.copy_(w[head.class_start : head.class_start + head.num_local])
    return head


def _columns(head: pfc.PartialFC, world: int) -> torch.Tensor | None:
    if head.sample_rate == 1.0:
        return None
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (head.last_index + head.class_start).tolist())
    return torch.tensor(sorted(c for part in gathered for c in part))


def _same_on_every_rank(values: list[float], world: int, msg: str) -> None:
    gathered: list = [None] * world
    dist.all_gather_object(gathered, values)
    assert all(v == gathered[0] for v in gathered), f"{msg}: buffers differ across ranks {gathered}"


def _check(rank: int, world: int) -> None:
    for rate in (1.0, 0.5):
        for name, case in CASES.items():
            _check_case(rank, world, rate, name, *case)


def _check_case(rank: int, world: int, rate: float, name: str, factory, logits_fn, state) -> None:
    w = _centres()
    labels = LABELS if rate == 1.0 else SPARSE_LABELS
    per = B // world
    mine = slice(rank * per, (rank + 1) * per)
    head = _head(factory(), w, rate)
    lo, n = head.class_start, head.num_local
    for step in range(STEPS):
        x = _embeddings(step)
        xl = x[mine].clone().requires_grad_()
        head.zero_grad(set_to_none=True)
        loss = head(xl, labels[mine])
        loss.backward()
        r_loss, r_gx, r_gw, state = ref.stateful_loss_and_grads(
            lambda a, b, c, st: logits_fn(a, b, c, st, step),  # noqa: B023 - used at once
            x, w, labels, state, columns=_columns(head, world),
        )  # fmt: skip
        msg = f"{name} (rate {rate}, step {step}, rank {rank}/{world})"
        assert_close(loss.detach(), r_loss, **EXACT, msg=lambda m, msg=msg: f"{msg} loss: {m}")
        assert_close(xl.grad, r_gx[mine], **EXACT, msg=lambda m, msg=msg: f"{msg} dX: {m}")
        assert_close(
            head.weight.grad.to_dense(), r_gw[lo : lo + n], **EXACT,
            msg=lambda m, msg=msg: f"{msg} dW: {m}",
        )  # fmt: skip
        buffers = [float(b) for b in head.margin.buffers()]
        _same_on_every_rank(buffers, world, msg)
        if state is not None:
            expected = [float(v) for v in (state if isinstance(state, tuple) else (state,))]
            assert_close(torch.tensor(buffers), torch.tensor(expected), **EXACT, msg=msg)
        if head.margin.needs_norms:
            assert_close(head.last_norms, x[mine].norm(dim=1), **EXACT)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_later_margins_match_their_official_formulas_sharded(world: int) -> None:
    run_ranks(_check, world)
