"""CenterLoss, TripletLoss and the head's initialisation on 1-3 ranks vs. one process."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import partialfc as pfc
from tests.distributed.harness import run_ranks

C, D, B = 10, 5, 12
EXACT = dict(rtol=1e-9, atol=1e-12)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 4, 6, 7, 9, 9, 0, 5, 3, 1, 4])
    centers = torch.randn(C, D, generator=g, dtype=torch.float64)
    return x, y, centers


def _local(t, rank, world):
    per = t.shape[0] // world
    return t[rank * per : (rank + 1) * per]


def _center_reference(x, y, centers, alpha, lam):
    x = x.clone().requires_grad_()
    loss = 0.5 * lam * ((x - centers[y]) ** 2).sum(1).mean()
    (gx,) = torch.autograd.grad(loss, x)
    moved = centers.clone()
    for j in range(C):  # the paper's update, one class at a time
        members = (y == j).nonzero().flatten()
        delta = (centers[j] - x.detach()[members]).sum(0) / (1 + members.numel())
        moved[j] = centers[j] - alpha * delta
    return loss.detach(), gx, moved


def _check_center(rank, world):
    x, y, centers = _data()
    loss_fn = pfc.CenterLoss(C, D, alpha=0.4, lam=0.7).double()
    lo, n = loss_fn.class_start, loss_fn.num_local
    loss_fn.centers.copy_(centers[lo : lo + n])
    xl = _local(x, rank, world).clone().requires_grad_()
    loss = loss_fn(xl, _local(y, rank, world))
    loss.backward()
    r_loss, r_gx, r_centers = _center_reference(x, y, centers, 0.4, 0.7)
    assert_close(loss.detach(), r_loss, **EXACT)
    assert_close(xl.grad, _local(r_gx, rank, world), **EXACT)
    assert_close(loss_fn.centers, r_centers[lo : lo + n], **EXACT)


def _triplet_data():
    g = torch.Generator().manual_seed(3)  # 18 rows: thirds of 18, 9 and 6 local rows
    return torch.randn(18, D, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (18,), generator=g
    )


def _triplet_reference(x, y, world, margin, angular, mining):
    B = x.shape[0]
    x = x.clone().requires_grad_()
    xn = F.normalize(x, dim=1)

    def dist(a, b):
        cos = (a * b).sum(-1)
        return torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7)) if angular else 2 - 2 * cos

    terms = []
    if mining == "thirds":
        per = B // world
        for r in range(world):
            a, p, n = xn[r * per : (r + 1) * per].chunk(3)
            terms.append(F.relu(dist(a, p) - dist(a, n) + margin))
    else:
        for i in range(B):  # brute force: every anchor, hardest positive and negative
            pos = [j for j in range(B) if y[j] == y[i] and j != i]
            neg = [j for j in range(B) if y[j] != y[i]]
            if pos and neg:
                d_ap = torch.stack([dist(xn[i], xn[j]) for j in pos]).max()
                d_an = torch.stack([dist(xn[i], xn[j]) for j in neg]).min()
                terms.append(F.relu(d_ap - d_an + margin).reshape(1))
    loss = torch.cat(terms).mean()
    (gx,) = torch.autograd.grad(loss, x)
    return loss.detach(), gx


def _check_triplet(rank, world):
    x, y = _triplet_data()
    for mining in ("thirds", "batch_hard"):
        for angular in (False, True):
            loss_fn = pfc.TripletLoss(margin=0.3, angular=angular, mining=mining)
            xl = _local(x, rank, world).clone().requires_grad_()
            loss = loss_fn(xl, _local(y, rank, world))
            loss.backward()
            r_loss, r_gx = _triplet_reference(x, y, world, 0.3, angular, mining)
            assert r_loss > 0, "the case must have active triplets"
            assert_close(loss.detach(), r_loss, **EXACT, msg=f"{mining} angular={angular}")
            assert_close(
                xl.grad, _local(r_gx, rank, world), **EXACT, msg=f"{mining} angular={angular}"
            )


def _init_head():
    return pfc.PartialFC(pfc.ArcFace(), embedding_size=D, num_classes=10_000, seed=11)


def _check_init(rank, world, expected):
    head = _init_head()
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, head.weight.detach())
    assert torch.equal(torch.cat(gathered), expected), "initial centres depend on the world size"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_center_loss_matches_reference(world):
    run_ranks(_check_center, world)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_triplet_losses_match_reference(world):
    run_ranks(_check_triplet, world)


@pytest.mark.parametrize("world", [2, 3])
def test_initial_centres_do_not_depend_on_world_size(world):
    assert not torch.distributed.is_initialized()
    run_ranks(_check_init, world, _init_head().weight.detach())
