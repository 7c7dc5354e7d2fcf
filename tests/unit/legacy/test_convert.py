"""``partialfc convert``: a synthetic insightface MXNet checkpoint through partialfc and back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import partialfc as pfc
from partialfc import checkpoint
from partialfc.cli import main
from partialfc.train.config import Config
from partialfc.train.state import head_state, restore_head_state

mx = pytest.importorskip("mxnet")

from partialfc.legacy import fresnet_embedding, get_symbol  # noqa: E402
from partialfc.legacy.convert import mxnet_to_torch  # noqa: E402

UNITS = (2, 2, 2, 2)  # iresnet18: a registered depth, so config.json and `export` apply
D, C, EPOCH = 16, 30, 3


def _random_params(sym, rng: np.random.Generator) -> tuple[dict, dict]:
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112), softmax_label=(1,))
    arg, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), arg_shapes, strict=True):
        if name in ("data", "softmax_label"):
            continue
        if name == "fc1_gamma":  # fix_gamma: MXNet keeps it at its init value 1
            value = np.ones(shape)
        elif name.endswith("_gamma") and "relu" in name:
            value = rng.uniform(0.1, 0.3, shape)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_beta", "_bias")):
            value = 0.1 * rng.standard_normal(shape)
        else:  # convolutions and fully connected: variance-preserving scale
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        arg[name] = mx.nd.array(value.astype(np.float32))
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes, strict=True):
        value = (
            rng.uniform(0.5, 2.0, shape)
            if name.endswith("_var")
            else 0.1 * rng.standard_normal(shape)
        )
        aux[name] = mx.nd.array(value.astype(np.float32))
    return arg, aux


def _cfg() -> dict[str, object]:
    return dict(
        loss_name="margin_softmax", num_classes=C, emb_size=D, loss_s=64.0, loss_m1=1.0,
        loss_m2=0.5, loss_m3=0.0, fc7_lr_mult=1.0, fc7_wd_mult=1.0, ce_loss=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mxnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, dict]:
    prefix = str(tmp_path_factory.mktemp("mxnet") / "model")
    sym = get_symbol(_cfg(), fresnet_embedding(UNITS, D))
    arg, aux = _random_params(sym, np.random.default_rng(0))
    mx.model.save_checkpoint(prefix, EPOCH, sym, arg, aux)
    return prefix, arg, aux


@pytest.fixture(scope="module")
def converted(mxnet_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix, _, _ = mxnet_checkpoint
    out = tmp_path_factory.mktemp("torch")
    assert main(["convert", "mxnet2torch", prefix, str(EPOCH), str(out)]) == 0
    return out


def test_round_trip_is_bit_identical(mxnet_checkpoint, converted: Path, tmp_path: Path) -> None:
    _, arg, aux = mxnet_checkpoint
    back = str(tmp_path / "back")
    assert main(["convert", "torch2mxnet", str(converted), back, "--epoch", "7"]) == 0
    sym, arg2, aux2 = mx.model.load_checkpoint(back, 7)
    assert sorted(arg2) == sorted(arg) and sorted(aux2) == sorted(aux)
    for original, returned in ((arg, arg2), (aux, aux2)):
        for name, value in original.items():
            a, b = value.asnumpy(), returned[name].asnumpy()
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), name
    # the written symbol is insightface's training symbol and binds the written parameters
    assert {"fc7_weight", "pre_fc1_weight", "softmax_label"} <= set(sym.list_arguments())
    assert set(sym.list_arguments()) - {"data", "softmax_label"} == set(arg2)


def test_written_symbol_computes_the_torch_model(converted: Path, tmp_path: Path) -> None:
    """torch2mxnet's symbol uses partialfc's eps and input scaling: the same function on pixels."""
    from partialfc.checkpoint import load_backbone

    prefix = str(tmp_path / "exported")
    assert main(["convert", "torch2mxnet", str(converted), prefix]) == 0
    sym, arg, aux = mx.model.load_checkpoint(prefix, 0)
    fc1 = sym.get_internals()["fc1_output"]
    pixels = np.random.default_rng(3).integers(0, 256, (2, 3, 112, 112)).astype(np.float32)
    params = {k: v for k, v in arg.items() if k in fc1.list_arguments()}
    exe = fc1.bind(mx.cpu(), {"data": mx.nd.array(pixels), **params}, aux_states=aux)
    got = exe.forward(is_train=False)[0].asnumpy()
    model, _ = load_backbone(converted)
    with torch.no_grad():
        want = model((torch.from_numpy(pixels) - 127.5) * (1 / 127.5)).numpy()
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


def test_centres_and_config(mxnet_checkpoint, converted: Path) -> None:
    _, arg, _ = mxnet_checkpoint
    centres = checkpoint.read_class_centers(converted)
    assert torch.equal(centres, torch.from_numpy(arg["fc7_weight"].asnumpy()))
    cfg = json.loads((checkpoint.resolve(converted) / "config.json").read_text())
    assert cfg["model"]["backbone"] == "iresnet18" and cfg["model"]["embedding_size"] == D
    # The converter writes only what it knows; the trainer's typed config reads it with its
    # defaults for the rest, and the margin is insightface's default (1, 0.5, 0): ArcFace.
    typed = Config.from_saved(cfg)
    assert (typed.model.backbone, typed.model.embedding_size) == ("iresnet18", D)
    assert typed.data.num_classes == C and typed.head.margin == "arcface"
    assert isinstance(checkpoint.read_run(converted).margin(), pfc.ArcFace)


def test_head_loads_centres_like_a_resume(mxnet_checkpoint, converted: Path) -> None:
    _, arg, _ = mxnet_checkpoint
    head = pfc.PartialFC(pfc.ArcFace(), embedding_size=D, num_classes=C)
    state = head_state(head)  # the trainer's head entries: "head.weight", "head.step", ...
    checkpoint.load(state, checkpoint.resolve(converted))
    restore_head_state(head, state)
    assert torch.equal(head.weight.detach(), torch.from_numpy(arg["fc7_weight"].asnumpy()))
    assert head.step == 0


def test_backbone_computes_what_the_mxnet_symbol_computes(mxnet_checkpoint, converted) -> None:
    """Same function up to float32 rounding, once BN eps and input scale are partialfc's."""
    from partialfc.checkpoint import load_backbone

    _, arg, aux = mxnet_checkpoint
    model, _ = load_backbone(converted)
    images = np.random.default_rng(1).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32)
    normalised = (images - np.float32(127.5)) * np.float32(1 / 127.5)
    with torch.no_grad():
        want = model(torch.from_numpy(normalised)).numpy()
    sym = fresnet_embedding(UNITS, D, bn_eps=1e-5, input_scale=None)
    params = {k: v for k, v in arg.items() if k in sym.list_arguments()}
    exe = sym.bind(
        mx.cpu(), {"data": mx.nd.array(normalised), **params}, aux_states=aux, grad_req="null"
    )
    got = exe.forward(is_train=False)[0].asnumpy()
    scale = np.abs(want).max()
    assert scale > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


def test_unknown_backbone_converts_centres_only(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(2)
    fc7 = mx.nd.array(rng.standard_normal((C, D)).astype(np.float32))
    se = mx.nd.array(rng.standard_normal((4, 64, 1, 1)).astype(np.float32))
    prefix = str(tmp_path / "se")
    sym = get_symbol(_cfg(), mx.sym.Variable("data"))
    args = {"fc7_weight": fc7, "stage1_unit1_se_conv1_weight": se}
    mx.model.save_checkpoint(prefix, 0, sym, args, {})
    with caplog.at_level(logging.WARNING):
        done = mxnet_to_torch(prefix, 0, tmp_path / "out")
    assert done.backbone is None and done.unmapped == ["stage1_unit1_se_conv1_weight"]
    assert "backbone not converted" in caplog.text
    assert torch.equal(checkpoint.read_class_centers(done.path), torch.from_numpy(fc7.asnumpy()))
    assert not (done.path / "config.json").exists()


def test_missing_params_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing-0002\.params"):
        mxnet_to_torch(str(tmp_path / "nothing"), 2, tmp_path / "out")


def test_trainer_starts_from_a_converted_checkpoint(
    mxnet_checkpoint, converted: Path, tmp_path: Path
) -> None:
    import shutil

    from partialfc.checkpoint import load_backbone
    from partialfc.train.config import Config
    from partialfc.train.runtime import Runtime
    from partialfc.train.trainer import Trainer

    _, arg, _ = mxnet_checkpoint
    out = tmp_path / "run"
    shutil.copytree(converted, out)
    cfg = Config.from_dict({
        "data": {"loader": "synthetic", "num_classes": C, "global_batch_size": 2},
        "model": {"backbone": "iresnet18", "embedding_size": D},
        "train": {"max_steps": 1, "output_dir": str(out)},
        "metrics": {"jsonl": False},
    })  # fmt: skip
    trainer = Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))
    assert trainer.resume(), "the converted checkpoint is picked up from output_dir"
    assert trainer.step == 0, "no trainer state in it: training starts at step 0"
    assert torch.equal(trainer.head.weight.detach(), torch.from_numpy(arg["fc7_weight"].asnumpy()))
    reference, _ = load_backbone(converted)
    for (name, a), (_, b) in zip(
        trainer.backbone.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_torch2mxnet_creates_the_output_folder(mxnet_checkpoint, converted: Path, tmp_path):
    _, arg, _ = mxnet_checkpoint
    prefix = tmp_path / "exports" / "r18" / "model"  # neither folder exists yet
    assert main(["convert", "torch2mxnet", str(converted), str(prefix), "--epoch", "2"]) == 0
    assert sorted(p.name for p in prefix.parent.iterdir()) == [
        "model-0002.params",
        "model-symbol.json",
    ]
    _, arg2, _ = mx.model.load_checkpoint(str(prefix), 2)
    assert arg2["fc7_weight"].asnumpy().tobytes() == arg["fc7_weight"].asnumpy().tobytes()


def test_torch2mxnet_output_under_a_file_is_one_line(converted: Path, tmp_path, capsys):
    (tmp_path / "exports").write_text("a file where the folder should be")
    prefix = tmp_path / "exports" / "model"
    assert main(["convert", "torch2mxnet", str(converted), str(prefix)]) == 2
    assert capsys.readouterr().err == (
        f"error: torch2mxnet OUT_PREFIX {prefix}: cannot create the folder {prefix.parent} "
        "(a file of that name exists)\n"
    )
