"""Fine-tuning: ``model.pretrained`` in each form a user holds, ``model.freeze_bn``, and the
trainer loading the weights before its first step, not on resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from partialfc import backbones, checkpoint
from partialfc.errors import UserError
from partialfc.train import trainer as trainer_module
from partialfc.train.config import Config
from partialfc.train.data import build_loader
from partialfc.train.finetune import freeze_batchnorm, load_pretrained
from partialfc.train.runtime import Runtime
from partialfc.train.trainer import Trainer
from tests.runlog import losses


def _model(seed: int, name: str = "tinyface") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = backbones.create(name, embedding_size=8)
    with torch.no_grad():  # running statistics that differ from a fresh model's
        model(torch.randn(4, 3, 112, 112))
    return model


def _write_forms(src: torch.nn.Module, tmp: Path) -> dict[str, Path]:
    sd = src.state_dict()
    forms = {"state_dict": tmp / "weights.pt", "backbone_pth_ddp": tmp / "backbone.pth"}
    torch.save(sd, forms["state_dict"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, forms["backbone_pth_ddp"])
    (tmp / "arcface_run").mkdir()
    torch.save(sd, tmp / "arcface_run" / "model.pt")
    forms["arcface_torch_folder"] = tmp / "arcface_run"
    forms["checkpoint_gpu_0"] = tmp / "checkpoint_gpu_0.pt"
    torch.save(
        {"state_dict_backbone": sd, "state_dict_softmax_fc": {}, "global_step": 9},
        forms["checkpoint_gpu_0"],
    )
    checkpoint.save({"model": get_model_state_dict(src)}, tmp / "pfc_run", step=3)
    forms["partialfc_run"] = tmp / "pfc_run"
    return forms


def test_every_form_loads_exactly(tmp_path: Path) -> None:
    src = _model(0)
    for form, path in _write_forms(src, tmp_path).items():
        dst = _model(1)
        load_pretrained(dst, path)
        for (name, want), got in zip(
            src.state_dict().items(), dst.state_dict().values(), strict=True
        ):
            assert torch.equal(got, want), f"{form}: {name}"


def test_a_mismatch_lists_missing_unexpected_and_reshaped_keys(tmp_path: Path) -> None:
    sd = _model(0).state_dict()
    missing = next(iter(sd))
    del sd[missing]
    sd["extra.weight"] = torch.zeros(3)
    reshaped = next(k for k, v in sd.items() if v.dim() == 2)
    sd[reshaped] = torch.zeros(2, 2)
    torch.save(sd, tmp_path / "bad.pt")
    dst = _model(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(UserError) as info:
        load_pretrained(dst, tmp_path / "bad.pt")
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert f"1 missing key(s): {missing}" in problems[0]
    assert "1 unexpected key(s): extra.weight" in problems[1]
    assert f"1 other shape(s): {reshaped} (2, 2) (the model: " in problems[2]
    assert all(p.startswith(f"model.pretrained: {tmp_path / 'bad.pt'}: ") for p in problems)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items()), "nothing loaded"


def test_unusable_paths_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save([1, 2], tmp_path / "list.pt")
    for path, text in (
        (tmp_path / "nowhere.pt", "does not exist"),
        (tmp_path / "empty", "neither a model.pt"),
        (tmp_path / "notes.txt", "is not a torch file"),
        (tmp_path / "list.pt", "holds a list, not a state_dict"),
    ):
        with pytest.raises(UserError, match=text):
            load_pretrained(_model(1), path)


def test_freeze_bn_keeps_the_running_statistics_through_train() -> None:
    model = _model(0)
    assert freeze_batchnorm(model) == 14
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    assert model.training
    model(torch.randn(4, 3, 112, 112))
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k
    assert freeze_batchnorm(_model(0, "tinyface_gn")) == 0


def _config(out: Path, max_steps: int = 2, **model) -> Config:
    return Config.from_dict(
        {
            "data": {"loader": "synthetic", "num_classes": 30, "global_batch_size": 8},
            "model": {"backbone": "tinyface", "embedding_size": 8, **model},
            "head": {"margin": "arcface", "margin_args": {"s": 8.0, "m": 0.3}},
            "optim": {"lr": 0.05},
            "train": {"max_steps": max_steps, "output_dir": str(out), "checkpoint_every": 100},
        }
    )


def test_the_trainer_loads_before_the_first_step_and_not_on_resume(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(_model(7).state_dict(), weights)
    cpu = Runtime(0, 1, 0, torch.device("cpu"))
    Trainer(_config(tmp_path / "a", pretrained=str(weights)), cpu).fit()
    by_hand = Trainer(_config(tmp_path / "b"), cpu)
    by_hand.backbone.load_state_dict(torch.load(weights))
    by_hand.fit()
    Trainer(_config(tmp_path / "c"), cpu).fit()  # from the seed's own initialisation
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a")[0] != losses(tmp_path / "c")[0]
    # Resuming: the checkpoint wins; weights that would not even load are not read.
    torch.save({"other": torch.zeros(1)}, weights)
    assert Trainer(_config(tmp_path / "a", 3, pretrained=str(weights)), cpu).fit()["step"] == 3
    with pytest.raises(UserError, match="missing key"):
        Trainer(_config(tmp_path / "d", pretrained=str(weights)), cpu).fit()


def test_the_trainer_sets_the_centres_to_class_means_under_the_pretrained_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    def short_epochs(*args):  # the synthetic epoch is 1000 batches: 20 cover the 30 classes
        loader = build_loader(*args)
        loader.batches_per_epoch = 20
        return loader

    monkeypatch.setattr(trainer_module, "build_loader", short_epochs)
    weights = tmp_path / "weights.pt"
    torch.save(_model(7).state_dict(), weights)
    cfg = _config(tmp_path / "run", pretrained=str(weights))
    cfg = Config.from_dict(
        {**cfg.to_dict(), "head": {**cfg.to_dict()["head"], "init": "class_means"}}
    )
    trainer = Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))
    random_norms = trainer.head.weight.detach().norm(dim=1)
    with caplog.at_level(logging.INFO, logger="partialfc"):  # the trainer's log, not stdout
        trainer.start_fresh()
    norms = trainer.head.weight.detach().norm(dim=1)
    seen = int((norms - 1).abs().lt(1e-5).sum())
    assert random_norms.max() < 0.5 and seen > 20, (seen, norms)
    assert f"class centres: {seen} of 30 set to class means" in caplog.text
