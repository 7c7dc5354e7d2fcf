"""Preflight and user errors as a user meets them: ``python -m partialfc.train CONFIG --check``
and a real run of the shipped demo config, each problem one line naming the key, exit 2, before
any work, and no traceback unless asked for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._service import (
    IDENTITIES,
    IMAGES_PER_IDENTITY,
    REPO,
    demo_overrides,
    error_lines,
    make_dataset,
    train,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("preflight") / "data")


def _copy(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def _check(data: Path, out: Path, *extra: str, env: dict | None = None):
    return train("--check", *demo_overrides(data, out, *extra), env=env)


def _assert_user_error(result, *expected: str) -> list[str]:
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert any(text in line for line in lines), (text, lines)
    return lines


def test_check_prints_the_run_it_would_start_and_writes_nothing(data, tmp_path) -> None:
    out = tmp_path / "run"
    result = _check(data, out, "--world-size=2")
    assert result.returncode == 0, result.stderr
    n = IDENTITIES * IMAGES_PER_IDENTITY
    # demo_cpu.toml: 8 epochs; 160 images in batches of 32 make 5 steps an epoch.
    assert f"{n} images of {IDENTITIES} classes" in result.stdout
    assert "steps:   40 of 32 images on 2 rank(s)" in result.stdout
    assert "starts at step 0" in result.stdout and "preflight: OK" in result.stdout
    assert not out.exists()


def test_every_config_problem_at_once_one_line_each(data, tmp_path) -> None:
    result = _check(
        data, tmp_path / "run", "--optim.lr=-1", "--data.loader=bogus", "--head.nope=1",
        "--model.backbone=resnet9000", "--train.max_steps=x",
    )  # fmt: skip
    lines = _assert_user_error(
        result, "optim.lr: must be > 0, got -1.0", "data.loader: must be one of",
        "--head.nope: unknown option", "model.backbone: unknown backbone 'resnet9000'",
        "--train.max_steps: expected int, got 'x'",
    )  # fmt: skip
    assert len(lines) == 5, lines


def test_verbose_and_debug_env_bring_the_traceback_back(data, tmp_path) -> None:
    for extra, env in ((("--verbose",), None), ((), {"PARTIALFC_DEBUG": "1"})):
        result = _check(data, tmp_path / "run", "--optim.lr=-1", *extra, env=env)
        assert result.returncode == 2
        assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_warmup_longer_than_the_run_names_the_key(data, tmp_path) -> None:
    # 8 epochs of 5 steps: warmup 40 never ends. Before preflight this failed at step 1 with
    # "warmup_steps must be in [0, total_steps=40)", naming no config key.
    _assert_user_error(
        _check(data, tmp_path / "run", "--optim.warmup_steps=40"),
        "optim.warmup_steps: 40 must be below the run's 40 steps",
    )
    _assert_user_error(
        _check(data, tmp_path / "run", "--train.max_steps=3", "--optim.warmup_steps=3"),
        "optim.warmup_steps: must be below the run's 3 steps (train.max_steps)",
    )


def test_missing_eval_set_and_batch_split_found_before_any_step(data, tmp_path) -> None:
    missing = tmp_path / "lfw.bin"
    result = train(*demo_overrides(data, tmp_path / "run"), f"--eval.sets={missing}",
                   "--data.global_batch_size=30", "--train.grad_accum=4")  # fmt: skip
    _assert_user_error(
        result,
        f"eval.sets: verification .bin not found: {missing}",
        "data.global_batch_size: 30 does not split",
    )
    assert not (tmp_path / "run").exists(), "nothing may be written before the checks pass"


def test_unwritable_output_dir(data, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _assert_user_error(
        _check(data, blocker / "run"), f"train.output_dir: cannot write in {blocker}"
    )
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        _assert_user_error(_check(data, locked / "run"), "train.output_dir: cannot write in")


def test_idx_offset_past_the_rec_end_is_found_at_preflight(data, tmp_path) -> None:
    copy = _copy(data, tmp_path)
    idx = copy / "train.idx"
    lines = idx.read_text().splitlines()
    key = lines[7].split("\t")[0]
    lines[7] = f"{key}\t{(copy / 'train.rec').stat().st_size + 4096}"
    idx.write_text("\n".join(lines) + "\n")
    _assert_user_error(
        _check(copy, tmp_path / "run"), "offset(s) lie outside the", f"first key {key}"
    )


def test_property_contradicting_record_0(tmp_path) -> None:
    copy = make_dataset(tmp_path / "grouped", shuffle=False)  # record 0 lists the identities
    (copy / "property").write_text(f"{IDENTITIES + 5},112,112")
    _assert_user_error(
        _check(copy, tmp_path / "run"),
        f"says {IDENTITIES + 5} classes but record 0",
    )


def test_missing_dataset_files(data, tmp_path) -> None:
    copy = _copy(data, tmp_path)
    (copy / "train.idx").unlink()
    _assert_user_error(_check(copy, tmp_path / "run"), "data.root:", "train.idx")
    _assert_user_error(_check(tmp_path / "nowhere", tmp_path / "run"), "does not exist")


def test_missing_pretrained_weights(data, tmp_path) -> None:
    missing = tmp_path / "backbone.pth"
    result = _check(data, tmp_path / "run", f"--model.pretrained={missing}")
    _assert_user_error(result, f"model.pretrained: {missing} does not exist")


def test_data_verify_decodes_every_record(data, tmp_path) -> None:
    copy = _copy(data, tmp_path)
    rec = bytearray((copy / "train.rec").read_bytes())
    key, offset = (copy / "train.idx").read_text().splitlines()[3].split("\t")
    start = int(offset) + 8 + 24 + 200  # frame and IRHeader, then into the JPEG's entropy data
    rec[start : start + 64] = bytes(b ^ 0xFF for b in rec[start : start + 64])
    (copy / "train.rec").write_bytes(bytes(rec))
    assert _check(copy, tmp_path / "run").returncode == 0  # the cheap checks cannot see it
    result = _check(copy, tmp_path / "run", "--data.verify=true")
    _assert_user_error(result, f"data.verify: {copy}: key {key}")


def test_resuming_with_another_shape_names_both_values_and_the_checkpoint(data, tmp_path) -> None:
    out = tmp_path / "run"
    first = train(*demo_overrides(data, out, "--train.max_steps=3", "--eval.sets="))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = out / "step-00000003"
    result = _check(data, out, "--model.embedding_size=64", "--model.backbone=tinyface_gn")
    _assert_user_error(
        result,
        f"model.embedding_size: the checkpoint {ckpt} has embedding size 128, the config 64",
        f"model.backbone: the checkpoint {ckpt} has backbone 'tinyface', the config 'tinyface_gn'",
    )
    # The same check before a real run: no DCP "Size mismatch" traceback from deep inside.
    run = train(*demo_overrides(data, out, "--train.max_steps=6", "--model.embedding_size=64"))
    _assert_user_error(run, "model.embedding_size: the checkpoint")
    ok = _check(data, out, "--train.max_steps=6")
    assert ok.returncode == 0 and f"resumes {ckpt} at step 3" in ok.stdout, ok.stderr
    # Another optimizer: its state has other entries than the checkpoint's (centres, backbone).
    result = _check(data, out, "--optim.name=adamw")
    _assert_user_error(
        result,
        f"optim.head_name (or optim.name): the checkpoint {ckpt} has class-centre optimizer state "
        "['momentum_buffer'], the config ['exp_avg', 'exp_avg_sq', 'step']",
        f"optim.name: the checkpoint {ckpt} has backbone optimizer 'sgd', the config 'adamw'",
    )
    ok = _check(data, out, "--optim.name=sgd", "--optim.head_name=sgd", "--optim.head_lr=0.5")
    assert ok.returncode == 0, ok.stderr


def test_the_launcher_checks_before_torchrun_spawns_anything(data, tmp_path) -> None:
    out = tmp_path / "run"
    missing = tmp_path / "agedb_30.bin"
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "train.sh"), "--nproc", "2", str(REPO / "partialfc" / "configs" / "demo_cpu.toml"),
         *demo_overrides(data, out), f"--eval.sets={missing}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    lines = _assert_user_error(result, f"eval.sets: verification .bin not found: {missing}")
    assert len(lines) == 1, result.stderr
    # torchrun never started: no agent banner, no worker output, nothing written.
    assert "torch.distributed" not in result.stderr and not out.exists()


def test_check_finds_the_busy_metrics_port_of_any_local_rank(data, tmp_path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _check(data, tmp_path / "run", f"--metrics.port={port - 1}", "--world-size=2")
    lines = _assert_user_error(result, f"metrics.port: local rank 1 serves on {port - 1} + 1:")
    assert len(lines) == 1 and f"port {port}" in lines[0], lines
