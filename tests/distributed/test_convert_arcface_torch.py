"""``partialfc convert arcface-torch``: an arcface_torch run saved by 2 ranks becomes a partialfc
checkpoint whose centres are the shards concatenated, exactly, and that resumes on 1 and 3 ranks.

The run is written as arcface_torch's ``train_v2.py`` writes it: one optimizer over two groups
(the backbone's parameters, then the centres), stepped for real so its state has its real layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from partialfc import backbones, checkpoint
from partialfc.cli import main as cli
from partialfc.errors import UserError
from partialfc.legacy.arcface_torch import convert
from partialfc.train.config import Config
from partialfc.train.runtime import Runtime
from partialfc.train.trainer import Trainer
from tests.distributed.harness import run_ranks

C, D, WORLD = 11, 16, 2  # arcface_torch's split of 11 on 2 ranks: 6 and 5 rows
GLOBAL_STEP, ACC = 6, 2  # micro-batches, gradient_acc: 3 optimizer steps


def _arcface_torch_run(folder: Path, optimizer: str) -> dict[str, torch.Tensor]:
    """The files of a 2-rank arcface_torch run; returns the full centres and their state."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    start = backbones.create("tinyface_gn", embedding_size=D).state_dict()
    full: dict[str, list[torch.Tensor]] = {}
    for rank, rows in enumerate((6, 5)):
        backbone = backbones.create("tinyface_gn", embedding_size=D)
        backbone.load_state_dict(start)
        weight = torch.nn.Parameter(torch.normal(0, 0.01, (rows, D)))
        groups = [{"params": list(backbone.parameters())}, {"params": [weight]}]
        if optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
        else:
            opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.1)
        g = torch.Generator().manual_seed(1)  # the backbones' gradients: DDP's, the same
        for _ in range(3):
            for p in backbone.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            weight.grad = torch.randn_like(weight)
            opt.step()
        if rank == 0:  # train_v2.py: rank 0 writes the backbone alone at the end of each epoch
            torch.save(backbone.state_dict(), folder / "model.pt")
        state = opt.state_dict()
        torch.save(
            {
                "epoch": 0,
                "global_step": GLOBAL_STEP,
                "state_dict_backbone": backbone.state_dict(),
                "state_dict_softmax_fc": {"weight": weight.detach()},
                "state_optimizer": state,
                "state_lr_scheduler": {},
            },
            folder / f"checkpoint_gpu_{rank}.pt",
        )
        centre = state["state"][state["param_groups"][-1]["params"][-1]]
        full.setdefault("weight", []).append(weight.detach())
        for key, value in centre.items():
            if key != "step":
                full.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in full.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_centres_are_the_concatenated_shards_exactly(
    tmp_path: Path, optimizer: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("PARTIALFC_PROGRESS_SECONDS", "3600")  # only the last line
    want = _arcface_torch_run(tmp_path / "at", optimizer)
    assert (
        cli(
            [
                "convert",
                "arcface-torch",
                str(tmp_path / "at"),
                str(tmp_path / "out"),
                "--gradient-acc",
                str(ACC),
            ]
        )
        == 0
    )
    assert capsys.readouterr().err.startswith("load: 2/2 shard (100%)  in ")  # not a terminal
    out = tmp_path / "out"
    assert checkpoint.latest_checkpoint(out).name == f"step-{GLOBAL_STEP // ACC:08d}"
    assert torch.equal(checkpoint.read_class_centers(out), want["weight"])
    keys = ["momentum_buffer"] if optimizer == "sgd" else ["exp_avg", "exp_avg_sq"]
    for key in keys:
        assert torch.equal(checkpoint.read_class_centers(out, f"head.weight.{key}"), want[key])
    if optimizer == "adamw":
        assert float(checkpoint.read_class_centers(out, "head.weight.step")) == 3.0


def test_incomplete_or_foreign_folders_are_user_errors(tmp_path: Path) -> None:
    _arcface_torch_run(tmp_path / "at", "sgd")
    (tmp_path / "at" / "checkpoint_gpu_2.pt").write_bytes(
        (tmp_path / "at" / "checkpoint_gpu_0.pt").read_bytes()
    )  # rows 6, 5, 6: not the split of 17 classes on 3 ranks (6, 6, 5)
    with pytest.raises(
        UserError,
        match=r"checkpoint_gpu_1.pt holds \(5, 16\) class centres; rank 1 of 3 owns 6 of 17",
    ):
        convert(tmp_path / "at", tmp_path / "out")
    (tmp_path / "at" / "checkpoint_gpu_1.pt").unlink()
    with pytest.raises(UserError, match=r"ranks \[0, 2\] but not of rank\(s\) \[1\]"):
        convert(tmp_path / "at", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"neither model\.pt nor checkpoint_gpu"):
        convert(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "model.pt").write_bytes((tmp_path / "at" / "model.pt").read_bytes())
    done = convert(tmp_path / "empty", tmp_path / "backbone_only")  # model.pt alone: no centres
    assert done.num_classes == 0 and done.path.name == "step-00000000"
    with pytest.raises(KeyError, match=r"head\.weight"):
        checkpoint.read_class_centers(done.path)


def _config(out: Path, optimizer: str, max_steps: int) -> dict:
    return {
        "data": {"loader": "synthetic", "num_classes": C, "global_batch_size": 6},
        "model": {"backbone": "tinyface_gn", "embedding_size": D},
        "head": {"margin": "arcface", "margin_args": {"s": 16.0, "m": 0.3}},
        "optim": {"name": optimizer, "lr": 0.01},
        "train": {"max_steps": max_steps, "output_dir": str(out), "checkpoint_every": 100},
    }


def _resume(rank: int, world: int, cfg: dict, expected: str) -> None:
    torch.set_num_threads(1)
    want = torch.load(expected)
    model_pt = torch.load(Path(expected).parent / "at" / "model.pt")
    trainer = Trainer(Config.from_dict(cfg), Runtime(rank, world, rank, torch.device("cpu")))
    assert trainer.resume()
    head = trainer.head
    rows = slice(head.class_start, head.class_start + head.num_local)
    state = trainer.opt_head.state[head.weight]
    report = {
        "step": trainer.step,
        "weight": torch.equal(head.weight.detach(), want["weight"][rows]),
        "state": all(torch.equal(state[k], v[rows]) for k, v in want.items() if k != "weight"),
        "backbone": all(
            torch.equal(v, model_pt[k]) for k, v in trainer.backbone.state_dict().items()
        ),
    }
    result = trainer.fit()
    report |= {"after": result["step"], "loss": result["loss"]}
    (Path(cfg["train"]["output_dir"]) / f"report-{world}-{rank}.json").write_text(
        json.dumps(report)
    )


@pytest.mark.parametrize(("world", "optimizer"), [(1, "sgd"), (3, "sgd"), (3, "adamw")])
def test_a_converted_run_resumes_on_any_world_size(tmp_path: Path, world: int, optimizer: str):
    want = _arcface_torch_run(tmp_path / "at", optimizer)
    torch.save(want, tmp_path / "want.pt")
    convert(tmp_path / "at", tmp_path / "out", gradient_acc=ACC)
    step = GLOBAL_STEP // ACC
    run_ranks(
        _resume, world, _config(tmp_path / "out", optimizer, step + 1), str(tmp_path / "want.pt")
    )
    for rank in range(world):
        report = json.loads((tmp_path / "out" / f"report-{world}-{rank}.json").read_text())
        assert report["step"] == step and report["after"] == step + 1, report
        assert report["weight"] and report["state"] and report["backbone"], report
        assert math.isfinite(report["loss"]), report
