"""A DDP backbone under the sharded head gets the true gradient of the global loss.

The head's loss is the global mean and the same on every rank, so the backbone's true gradient is
the SUM of the ranks' local contributions; DDP averages by default. The trainer registers
``sum_gradients_hook`` (via ``use_global_loss_gradients``) instead of rescaling the loss, which
would also rescale the head's own gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.testing import assert_close

import partialfc as pfc
from partialfc.distributed import use_global_loss_gradients
from tests.distributed.harness import run_ranks

C, D, B = 11, 8, 12


def _backbone() -> torch.nn.Module:
    torch.manual_seed(0)  # no BatchNorm: per-rank batch statistics would differ from one process
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.PReLU(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, D),
    ).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(
        0, C, (B,), generator=g
    )


def _head() -> pfc.PartialFC:
    return pfc.PartialFC(
        pfc.ArcFace(s=8.0, m=0.5), embedding_size=D, num_classes=C, dtype=torch.float64, seed=5
    )


def _reference_grads() -> list[torch.Tensor]:
    assert not torch.distributed.is_initialized(), "the reference is one plain process"
    images, labels = _data()
    model = _backbone()
    _head()(model(images), labels).backward()
    return [p.grad for p in model.parameters()]


def _check_ddp(rank: int, world: int, summed: bool, expected: list[torch.Tensor]) -> None:
    images, labels = _data()
    per = B // world
    model = DistributedDataParallel(_backbone())
    if summed:
        use_global_loss_gradients(model)
    loss = _head()(
        model(images[rank * per : (rank + 1) * per]), labels[rank * per : (rank + 1) * per]
    )
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    if summed:
        for got, want in zip(grads, expected, strict=True):
            assert_close(got, want, rtol=1e-9, atol=1e-12)
    else:  # DDP's default average is off by exactly the world size
        for got, want in zip(grads, expected, strict=True):
            assert_close(got * world, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_with_summed_gradients_equals_one_process(world: int) -> None:
    run_ranks(_check_ddp, world, True, _reference_grads())


def test_ddp_default_average_is_off_by_world_size() -> None:
    run_ranks(_check_ddp, 2, False, _reference_grads())
