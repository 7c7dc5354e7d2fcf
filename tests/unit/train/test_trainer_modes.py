"""Gradient accumulation averages exactly; bf16 and fp16 (one GradScaler, two optimizers) train."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from partialfc.train.config import Config
from partialfc.train.runtime import Runtime
from partialfc.train.schedule import learning_rate
from partialfc.train.trainer import Trainer
from tests.runlog import losses


def _run(tmp_path, head: dict | None = None, optim: dict | None = None, **train):
    cfg = Config.from_dict({
        "data": {"loader": "synthetic", "num_classes": 30, "global_batch_size": 8},
        "model": {"backbone": "tinyface_gn", "embedding_size": 8},
        "head": {"margin": "arcface", "margin_args": {"s": 8.0, "m": 0.3}, "sample_rate": 0.5, **(head or {})},
        "optim": {"lr": 0.05, **(optim or {})},
        "train": {"max_steps": 3, "output_dir": str(tmp_path), "checkpoint_every": 100}
        | train,
    })  # fmt: skip
    trainer = Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))
    return trainer, {**trainer.fit(), "losses": losses(cfg.train.output_dir)}


@pytest.mark.parametrize(("accum", "optim"), [(2, "sgd"), (4, "sgd"), (2, "adamw")])
def test_accumulated_micro_batches_reproduce_one_step_exactly(tmp_path, accum, optim) -> None:
    # Full softmax: with sampling every micro-batch would draw its own negatives (the head counts
    # forward calls), a different, equally valid, estimator.
    one, r_one = _full_softmax_run(tmp_path / "one", 1, optim)
    many, r_many = _full_softmax_run(tmp_path / "many", accum, optim)
    assert type(many.opt_head).__name__ == {"sgd": "SparseSGD", "adamw": "SparseAdamW"}[optim]
    assert_close(
        torch.tensor(r_many["losses"]), torch.tensor(r_one["losses"]), rtol=1e-5, atol=1e-6
    )
    for a, b in zip(many.backbone.parameters(), one.backbone.parameters(), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-3 * float(b.detach().abs().max()))
    assert_close(many.head.weight, one.head.weight, rtol=1e-4, atol=1e-6)


def _full_softmax_run(out, accum: int, optim: str = "sgd"):
    cfg = Config.from_dict({
        "data": {"loader": "synthetic", "num_classes": 30, "global_batch_size": 8},
        "model": {"backbone": "tinyface_gn", "embedding_size": 8},
        "head": {"margin": "arcface", "margin_args": {"s": 8.0, "m": 0.3}, "sample_rate": 1.0},
        "optim": {"lr": 0.05 if optim == "sgd" else 1e-3, "name": optim},
        "train": {"max_steps": 3, "output_dir": str(out), "checkpoint_every": 100, "grad_accum": accum},
    })  # fmt: skip
    trainer = Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))
    return trainer, {**trainer.fit(), "losses": losses(cfg.train.output_dir)}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision: str) -> None:
    trainer, result = _run(tmp_path, precision=precision, clip_grad_norm=5.0)
    assert len(result["losses"]) == 3
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert trainer.head.weight.dtype == torch.float32, "centres stay float32 under autocast"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_head_trains_like_the_reference_head(tmp_path, precision: str) -> None:
    """head.fused = "on" (Triton; its interpreter without CUDA) against "off", step for step.

    bf16 compares two steps (the second shows the first's backward): the two heads round
    differently, and by the third step that difference has grown past bf16's resolution on some
    CPUs (2.2% measured), which says nothing about the fused path.
    """
    pytest.importorskip("triton")
    steps = 3 if precision == "fp32" else 2
    ref_trainer, reference = _run(tmp_path / "off", precision=precision, max_steps=steps)
    fused_trainer, fused = _run(
        tmp_path / "on", head={"fused": "on"}, precision=precision, max_steps=steps
    )
    tol = 1e-4 if precision == "fp32" else 2e-2
    assert_close(
        torch.tensor(fused["losses"]), torch.tensor(reference["losses"]), rtol=tol, atol=tol
    )
    scale = float(ref_trainer.head.weight.detach().abs().max())
    assert_close(fused_trainer.head.weight, ref_trainer.head.weight, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize(
    ("precision", "centres"), [("fp32", "sgd"), ("bf16", "sgd"), ("fp32", "adamw")]
)
def test_fused_update_trains_like_the_fused_head(tmp_path, precision: str, centres: str) -> None:
    """head.fused_update: the centres updated inside backward, the same run as fused + step()."""
    pytest.importorskip("triton")
    optim = {"head_name": centres}
    base, r_base = _run(tmp_path / "fused", head={"fused": "on"}, optim=optim, precision=precision)
    upd, r_upd = _run(
        tmp_path / "update",
        head={"fused": "on", "fused_update": True},
        optim=optim,
        precision=precision,
    )
    assert upd.head.weight.grad is None, "no dW was stored"
    assert_close(torch.tensor(r_upd["losses"]), torch.tensor(r_base["losses"]))
    assert_close(upd.head.weight, base.head.weight)
    state_upd, state_base = (
        upd.opt_head.state[upd.head.weight],
        base.opt_head.state[base.head.weight],
    )
    assert (
        set(state_upd)
        == {"sgd": {"momentum_buffer"}, "adamw": {"step", "exp_avg", "exp_avg_sq"}}[centres]
    )
    for key in state_base:
        assert_close(state_upd[key], state_base[key])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head": {"fused_update": True}}, "head.fused = 'on' or 'auto'"),
        ({"head": {"fused": "on", "fused_update": True}, "train": {"precision": "fp16"}}, "fp16"),
        ({"head": {"fused": "on", "fused_update": True}, "train": {"grad_accum": 2}}, "grad_accum"),
    ],
)
def test_fused_update_refuses_what_it_cannot_do(overrides: dict, message: str) -> None:
    raw = {"data": {"loader": "synthetic", "num_classes": 10}, **overrides}
    with pytest.raises(ValueError, match=r"head\.fused_update") as err:
        Config.from_dict(raw)
    assert message in str(err.value)


def test_the_centres_take_their_own_optimizer_lr_and_weight_decay(tmp_path) -> None:
    optim = {"head_name": "adamw", "head_lr": 0.01, "head_weight_decay": 0.2}
    trainer = Trainer(
        Config.from_dict(
            {
                "data": {"loader": "synthetic", "num_classes": 30, "global_batch_size": 8},
                "model": {"backbone": "tinyface_gn", "embedding_size": 8},
                "head": {"margin": "arcface", "margin_args": {"s": 8.0, "m": 0.3}},
                "optim": {"lr": 0.05, "warmup_steps": 1, **optim},
                "train": {"max_steps": 3, "output_dir": str(tmp_path), "checkpoint_every": 100},
            }
        ),
        Runtime(0, 1, 0, torch.device("cpu")),
    )
    trainer.fit()
    assert type(trainer.opt_backbone).__name__ == "SGD"
    assert type(trainer.opt_head).__name__ == "SparseAdamW"
    (group,) = trainer.opt_head.param_groups
    assert group["weight_decay"] == 0.2 and group["lr"] == learning_rate(2, 0.01, 3, 1)
    assert trainer.opt_backbone.param_groups[0]["lr"] == learning_rate(2, 0.05, 3, 1)
    assert trainer.opt_backbone.param_groups[0]["weight_decay"] == 5e-4
    assert float(trainer.opt_head.state[trainer.head.weight]["step"]) == 3.0
