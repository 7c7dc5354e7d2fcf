"""Class centres converted from MXNet load row-sharded on any world size (gloo, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import partialfc as pfc
from partialfc import checkpoint
from partialfc.train.state import head_state, restore_head_state
from tests.distributed.harness import run_ranks

C, D = 11, 6  # 11 rows on 3 ranks: uneven shards 4, 4, 3


def _load_shard(rank: int, world: int, ckpt: str, expected: str) -> None:
    head = pfc.PartialFC(pfc.ArcFace(), embedding_size=D, num_classes=C)
    state = head_state(head)
    checkpoint.load(state, ckpt)
    restore_head_state(head, state)
    full = torch.load(expected)
    rows = full[head.class_start : head.class_start + head.num_local]
    assert torch.equal(head.weight.detach(), rows), (rank, world)


@pytest.mark.parametrize("world", [3])  # 3: uneven shards; 2 and 1 add nothing new
def test_converted_centres_shard_on_any_world_size(tmp_path: Path, world: int) -> None:
    mx = pytest.importorskip("mxnet")
    from partialfc.legacy import get_symbol
    from partialfc.legacy.convert import mxnet_to_torch

    fc7 = np.random.default_rng(0).standard_normal((C, D)).astype(np.float32)
    cfg = dict(
        loss_name="margin_softmax", num_classes=C, emb_size=D, loss_s=64.0, loss_m1=1.0,
        loss_m2=0.5, loss_m3=0.0, fc7_lr_mult=1.0, fc7_wd_mult=1.0, ce_loss=False,
    )  # fmt: skip
    prefix = str(tmp_path / "model")
    sym = get_symbol(cfg, mx.sym.Variable("data"))
    mx.model.save_checkpoint(prefix, 1, sym, {"fc7_weight": mx.nd.array(fc7)}, {})
    done = mxnet_to_torch(prefix, 1, tmp_path / "out")
    torch.save(torch.from_numpy(fc7), tmp_path / "fc7.pt")
    run_ranks(_load_shard, world, str(done.path), str(tmp_path / "fc7.pt"))
