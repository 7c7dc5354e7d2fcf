"""``head.init = "class_means"`` on 1, 2 and 3 gloo ranks against a single-process reference:
every rank embeds its slice of each global batch, each centre is written by its owner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import partialfc as pfc
from partialfc.train.finetune import init_class_means
from tests.distributed.harness import run_ranks

C, D, B, BATCHES = 7, 4, 6, 3  # class 6 never occurs: it keeps its initial centre


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, D), nn.BatchNorm1d(D))
    with torch.no_grad():  # eval mode must use these, not the batch's statistics
        model[2].running_mean.uniform_(-1, 1)
        model[2].running_var.uniform_(0.5, 2)
    return model.train()


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(B, 3, 2, 2, generator=g), torch.randint(0, C - 1, (B,), generator=g))
        for _ in range(BATCHES)
    ]


def _head() -> pfc.PartialFC:
    return pfc.PartialFC(pfc.ArcFace(), D, C, seed=3)


def _rank(rank: int, world: int, out: str) -> None:
    per = B // world
    mine = [
        (x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]) for x, y in _data()
    ]
    head, model = _head(), _backbone()
    count = init_class_means(model, mine, head, torch.device("cpu"))
    assert model.training, "the backbone's mode is restored"
    torch.save(
        {"start": head.class_start, "weight": head.weight.detach(), "count": count},
        Path(out) / f"rank-{rank}.pt",
    )


@pytest.mark.parametrize("world", [1, 2, 3])
def test_class_means_equal_a_single_process_reference(tmp_path: Path, world: int) -> None:
    run_ranks(_rank, world, str(tmp_path))
    parts = [torch.load(tmp_path / f"rank-{r}.pt") for r in range(world)]
    got = torch.cat([p["weight"] for p in sorted(parts, key=lambda p: p["start"])])
    model = _backbone().eval().double()
    x = torch.cat([x for x, _ in _data()]).double()
    y = torch.cat([y for _, y in _data()])
    with torch.no_grad():
        emb = F.normalize(model(x), dim=1)
    want = _head().weight.detach().clone()  # the initial centres (the same on one rank)
    for c in y.unique():
        want[c] = F.normalize(emb[y == c].mean(0), dim=0).float()
    assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert sum(p["count"] for p in parts) == len(y.unique()) == C - 1
