"""Without MXNet the legacy package still imports, and using it names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from partialfc.legacy import get_symbol
from partialfc.legacy.convert import mxnet_to_torch


def test_import_does_not_load_mxnet() -> None:
    code = "import sys, partialfc.legacy.convert, partialfc.cli; assert 'mxnet' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_mxnet_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "mxnet", None)  # `import mxnet` now raises ImportError
    cfg = {"loss_name": "triplet", "triplet_alpha": 0.3, "per_batch_size": 3}
    with pytest.raises(ImportError, match=r"pip install partialfc\[mxnet\]"):
        get_symbol(cfg, embedding=None)
    (tmp_path / "m-0000.params").write_bytes(b"")
    with pytest.raises(ImportError, match=r"partialfc\[mxnet\]"):
        mxnet_to_torch(str(tmp_path / "m"), 0, tmp_path / "out")
