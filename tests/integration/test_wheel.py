"""Installed as users install it: the wheel, in a fresh venv, runs ``partialfc demo`` from any folder.

The wheel is built offline from a copy of the source (``pip wheel --no-deps --no-build-isolation``,
so the build leaves nothing in the checkout) and installed into a new venv without its
dependencies; the venv then sees this interpreter's site-packages through a ``.pth`` line, which
gives it torch and the rest without a download but not the editable partialfc (an editable install
is a finder that only a site folder's own ``.pth`` files install, and a plain path added by a
``.pth`` line does not run them). The test checks that the partialfc it runs is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import partialfc

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "partialfc")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout's files (committed or not)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": _IGNORED} if copy is shutil.copytree else {}))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(tmp / "dist"), str(src)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (found,) = (tmp / "dist").glob("partialfc-*.whl")
    return found


_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def test_the_wheel_holds_the_configs_license_and_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
    shipped = {
        f"partialfc/configs/{p.name}" for p in (REPO / "partialfc" / "configs").glob("*.toml")
    }
    assert "partialfc/configs/demo_cpu.toml" in shipped and shipped <= names
    assert {"partialfc/commands/demo.py", "partialfc/py.typed"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    headers = [line for line in metadata.splitlines() if ": " in line]
    assert f"Version: {partialfc.__version__}" in headers  # the one source of the version
    assert "License-Expression: Apache-2.0" in headers
    assert not any(h.startswith("Classifier: License ::") for h in headers)  # PEP 639 forbids it
    assert any(h.startswith("Project-URL: ") for h in headers)


def test_the_installed_wheel_runs_the_demo_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so pip sees no other partialfc it might uninstall.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "elsewhere"  # not the checkout: nothing of the source tree is in reach
    work.mkdir()

    where = subprocess.run(
        [str(python), "-c", "import partialfc; print(partialfc.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where) == Path(purelib) / "partialfc" / "__init__.py"

    listed = subprocess.run(
        [str(venv / "bin" / "partialfc"), "configs"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"demo_cpu             {Path(purelib) / 'partialfc' / 'configs' / 'demo_cpu.toml'}" in (
        listed.splitlines()
    )

    done = subprocess.run(
        [str(venv / "bin" / "partialfc"), "demo", "--identities", "10", "--val-pairs", "20",
         "--steps", "2", "--ranks", "1", "--out", "demo"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = work / "demo"
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000002"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2]
    assert "eval/val" in steps[-1] and (out / "model.onnx").stat().st_size > 0
    assert "accuracy by step: 2: " in done.stdout
    assert "onnxruntime matches PyTorch" in done.stdout
