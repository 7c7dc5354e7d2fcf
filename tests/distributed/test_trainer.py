"""The trainer on real gloo ranks: N ranks equal one process; resume on other world sizes."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from partialfc import checkpoint
from partialfc.checkpoint import load_backbone
from partialfc.data.synth import SynthConfig, synth_dataset
from partialfc.log import configure_logging
from partialfc.train.config import Config
from partialfc.train.runtime import Runtime
from partialfc.train.schedule import learning_rate
from partialfc.train.trainer import Trainer
from tests.distributed.harness import run_ranks
from tests.runlog import losses


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synth_dataset(
        root,
        SynthConfig(identities=12, images_per_identity=4, val_identities=6, val_pairs=20),
        workers=1,
    )
    return root


def _config(data: Path, out: Path, steps: int, backbone: str = "tinyface_gn", **train) -> dict:
    return {
        "data": {"root": str(data), "loader": "torch", "global_batch_size": 12, "workers": 0},
        "model": {"backbone": backbone, "embedding_size": 16},
        "head": {"margin": "arcface", "margin_args": {"s": 16.0, "m": 0.3}, "sample_rate": 1.0},
        "optim": {"lr": 0.05, "warmup_steps": 1},
        "train": {
            "max_steps": steps,
            "output_dir": str(out),
            "checkpoint_every": 2,
            "log_every": 1,
            **train,
        },
        "eval": {"sets": [str(data / "val.bin")], "every": 0},
        "metrics": {"port": 0},
    }


def _fit(rank: int, world: int, cfg: dict) -> None:
    torch.set_num_threads(1)
    result = Trainer(Config.from_dict(cfg), Runtime(rank, world, rank, torch.device("cpu"))).fit()
    if rank == 0:
        out = Path(cfg["train"]["output_dir"])
        (out / f"result-{world}.json").write_text(json.dumps(result))


def _result(out: Path, world: int, after: int = 0) -> dict:
    """The run's result, with the losses of its steps after ``after`` from metrics.jsonl."""
    return {**json.loads((out / f"result-{world}.json").read_text()), "losses": losses(out, after)}


def test_n_ranks_train_exactly_like_one_process(dataset: Path, tmp_path: Path) -> None:
    runs = {}
    for world in (1, 2, 3):
        out = tmp_path / f"w{world}"
        run_ranks(_fit, world, _config(dataset, out, steps=3))
        runs[world] = (out, _result(out, world))
    one_out, one = runs[1]
    assert len(one["losses"]) == 3 and all(map(math.isfinite, one["losses"]))
    assert 0.0 <= one["eval"]["val"] <= 1.0, "evaluation ran at the end"
    for world in (2, 3):
        out, res = runs[world]
        assert_close(torch.tensor(res["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
        assert_close(
            checkpoint.read_class_centers(out),
            checkpoint.read_class_centers(one_out),
            rtol=1e-4,
            atol=1e-6,
        )
        model, _ = load_backbone(out)
        reference, _ = load_backbone(one_out)
        for (name, a), (_, b) in zip(
            model.state_dict().items(), reference.state_dict().items(), strict=True
        ):
            # float32 sums in another order, over three steps: ~1e-5 of each tensor's scale. An
            # averaging (not summing) DDP would be off by the whole update, ~1e-2 of it.
            scale = float(b.abs().max()) if b.dtype.is_floating_point else 1.0
            assert_close(a, b, rtol=1e-4, atol=1e-3 * scale, msg=name)
        assert res["eval"]["val"] == pytest.approx(one["eval"]["val"], abs=0.051), (
            "same model, same accuracy"
        )
        # XNorm gathers every rank's norms: a rank's slice alone would give another mean.
        xnorm, reference_xnorm = (
            _eval_record(out)["eval/val/xnorm"],
            _eval_record(one_out)["eval/val/xnorm"],
        )
        assert xnorm == pytest.approx(reference_xnorm, rel=1e-3)
    record = _eval_record(one_out)
    assert record["eval/val/best"] == record["eval/val"] and record["eval/val/xnorm"] > 0
    assert 0.0 <= record["eval/val/val"] <= 1.0 and 0.0 <= record["eval/val/far"] <= 1.0


def _eval_record(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval/val" in r][-1]


def test_resume_on_three_ranks_then_one(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_ranks(_fit, 2, _config(dataset, out, steps=4))
    before = checkpoint.read_class_centers(out)
    run_ranks(_fit, 3, _config(dataset, out, steps=4))  # resumes at 4, nothing to do, saves again
    assert checkpoint.latest_checkpoint(out).name == "step-00000004"
    assert torch.equal(checkpoint.read_class_centers(out), before), "the move changed no centre"
    run_ranks(_fit, 1, _config(dataset, out, steps=6))  # and goes on training on one process
    res = _result(out, 1, after=4)
    assert res["step"] == 6 and len(res["losses"]) == 2
    assert not torch.equal(checkpoint.read_class_centers(out), before)


@pytest.mark.slow
def test_sub_centres_train_alike_on_one_and_three_ranks_and_resume_on_two(
    dataset: Path, tmp_path: Path
) -> None:
    """[head] sub_centers = 3 through the trainer: 3 ranks (classes 4/4/4, rows 12 each) follow
    one process; the run then resumes on 2 ranks from the (36, D) class-major checkpoint."""
    runs = {}
    for world in (1, 3):
        out = tmp_path / f"w{world}"
        cfg = _config(dataset, out, steps=3)
        cfg["head"]["sub_centers"] = 3
        run_ranks(_fit, world, cfg)
        runs[world] = (out, _result(out, world))
    (one_out, one), (three_out, three) = runs[1], runs[3]
    assert_close(torch.tensor(three["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    centres = checkpoint.read_class_centers(three_out)
    assert centres.shape == (12 * 3, 16)
    assert_close(centres, checkpoint.read_class_centers(one_out), rtol=1e-4, atol=1e-6)
    cfg = _config(dataset, three_out, steps=5)
    cfg["head"]["sub_centers"] = 3
    run_ranks(_fit, 2, cfg)
    res = _result(three_out, 2, after=3)
    assert res["step"] == 5 and len(res["losses"]) == 2 and all(map(math.isfinite, res["losses"]))


def _stored(path: Path, tmp: Path) -> dict[str, object]:
    """Every entry of a DCP checkpoint, flattened to dotted names."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, tmp)
    flat: dict[str, object] = {}

    def walk(value: object, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{name}.{i}")
        else:
            flat[name] = value

    walk(torch.load(tmp, weights_only=False), "")
    return flat


def test_resume_from_any_checkpoint_continues_bit_for_bit(dataset: Path, tmp_path: Path) -> None:
    """A BatchNorm backbone, negative sampling and a margin with no state of its own: the resumed
    run's losses and its whole final checkpoint (running statistics, momentum, counters, data
    position) equal the uninterrupted run's, from mid-epoch and from an epoch's end alike."""
    steps, per_epoch = 6, 4  # 48 images / 12: checkpoints at 2 (mid-epoch) and 4 (epoch's end)
    extra = {"keep_checkpoints": 10}
    straight = tmp_path / "straight"
    cfg = _config(dataset, straight, steps=steps, backbone="tinyface", **extra)
    cfg["head"]["sample_rate"] = 0.5
    run_ranks(_fit, 2, cfg)
    expected = _result(straight, 2)["losses"]
    final = _stored(straight / f"step-{steps:08d}", tmp_path / "straight.pt")
    assert final["head.step"] == steps and final["data.epoch"] == steps // per_epoch
    for start in (2, 4):
        out = tmp_path / f"from{start}"
        out.mkdir()
        name = f"step-{start:08d}"
        shutil.copytree(straight / name, out / name)
        run_ranks(_fit, 2, {**cfg, "train": {**cfg["train"], "output_dir": str(out)}})
        assert _result(out, 2, after=start)["losses"] == expected[start:], f"resumed at {start}"
        got = _stored(out / f"step-{steps:08d}", tmp_path / f"from{start}.pt")
        assert set(got) == set(final)
        for key, value in final.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), f"{key} after resuming at {start}"
            else:
                assert got[key] == value, f"{key} after resuming at {start}"


def _fit_and_fingerprint(rank: int, world: int, cfg: dict) -> None:
    """Train, then record this rank's backbone parameters (float64 sums) for comparison."""
    torch.set_num_threads(1)
    printed = io.StringIO()
    configure_logging(rank, stream=printed)  # as python -m partialfc.train does
    trainer = Trainer(Config.from_dict(cfg), Runtime(rank, world, rank, torch.device("cpu")))
    trainer.fit()
    prints = {n: float(p.detach().double().sum()) for n, p in trainer.backbone.named_parameters()}
    prefix = f"INFO [rank {rank}] partialfc.train.trainer: "
    prints["stdout"] = [
        line.partition(prefix)[2]
        for line in printed.getvalue().splitlines()
        if "optimizers" in line
    ]
    out = Path(cfg["train"]["output_dir"])
    (out / f"fingerprint-{rank}.json").write_text(json.dumps(prints))


def test_a_vit_trains_with_adamw_on_two_ranks(dataset: Path, tmp_path: Path) -> None:
    """arcface_torch's vit_t (patch masking and drop-path on) under DDP with AdamW: every
    trainable tensor, the mask token included, gets a gradient each step and stays equal on the
    two ranks."""
    out = tmp_path / "vit"
    cfg = _config(dataset, out, steps=2, backbone="vit_t", checkpoint_every=1)
    cfg["optim"] = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 1}
    cfg["eval"]["sets"] = []  # the eval forward is not what this test is about
    run_ranks(_fit_and_fingerprint, 2, cfg)
    steps = losses(out)
    assert len(steps) == 2 and all(map(math.isfinite, steps))
    ranks = [json.loads((out / f"fingerprint-{r}.json").read_text()) for r in (0, 1)]
    stdout = [r.pop("stdout") for r in ranks]
    assert ranks[0] == ranks[1], "DDP kept the two ranks' backbones equal"
    before, _ = load_backbone(checkpoint.checkpoint_dir(out, 1))
    after, cfg_saved = load_backbone(checkpoint.checkpoint_dir(out, 2))
    assert cfg_saved.backbone == "vit_t"
    old = dict(before.named_parameters())
    for name, p in after.named_parameters():
        assert not torch.equal(p, old[name]), f"{name} did not move in the last step"
        assert ranks[0][name] == pytest.approx(float(p.detach().double().sum()), rel=1e-12), name
    adamw = "(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1)"
    assert stdout[0] == [f"optimizers: backbone AdamW{adamw}; class centres SparseAdamW{adamw}"]
    assert stdout[1] == [], "rank 0 alone logs INFO"
    # The centres follow optim.name (SparseAdamW). Every row is used (sample_rate 1), so step 2's
    # centres are AdamW's update at t = 2 of step 1's, with step 2's moments.
    one, two = checkpoint.checkpoint_dir(out, 1), checkpoint.checkpoint_dir(out, 2)
    w1, w2 = checkpoint.read_class_centers(one), checkpoint.read_class_centers(two)
    m, v = (
        checkpoint.read_class_centers(two, f"head.weight.{k}") for k in ("exp_avg", "exp_avg_sq")
    )
    assert float(checkpoint.read_class_centers(two, "head.weight.step")) == 2.0
    lr = learning_rate(1, 1e-3, 2, warmup_steps=1)
    want = w1 * (1 - lr * 0.1) - lr / (1 - 0.9**2) * m / ((v / (1 - 0.999**2)).sqrt() + 1e-8)
    assert_close(w2, want, rtol=1e-5, atol=1e-7)
    assert float((w2 - w1).abs().amax()) > 0.5 * lr, "Adam steps are about lr per element"
