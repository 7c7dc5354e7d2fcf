"""Data: MXNet RecordIO without MXNet, the insightface layout, loaders for torch and DALI.

Importing this package loads neither torch's DataLoader workers nor DALI nor Pillow: the torch
loader is imported on first use of its names, DALI only inside :mod:`partialfc.data.dali`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from partialfc.data.layout import DatasetError, FaceRecord, Property, write_dataset
from partialfc.data.recordio import (
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    RecordIOError,
    pack,
    pack_img,
    unpack,
    unpack_img,
)
from partialfc.data.verification_bin import read_bin, write_bin

if TYPE_CHECKING:
    from partialfc.data.dali import DaliLoader
    from partialfc.data.dataset import RecordDataset
    from partialfc.data.loader import GlobalBatchSampler, RecordLoader
    from partialfc.data.synth import SynthConfig, synth_dataset

_LAZY = {
    "RecordDataset": "partialfc.data.dataset",
    "GlobalBatchSampler": "partialfc.data.loader",
    "RecordLoader": "partialfc.data.loader",
    "DaliLoader": "partialfc.data.dali",
    "SynthConfig": "partialfc.data.synth",
    "synth_dataset": "partialfc.data.synth",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import partialfc.data` (e.g. for RecordIO in a packing script) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'partialfc.data' has no attribute {name!r}")


__all__ = [
    "DaliLoader",
    "DatasetError",
    "FaceRecord",
    "GlobalBatchSampler",
    "IRHeader",
    "IndexedRecordReader",
    "IndexedRecordWriter",
    "Property",
    "RecordDataset",
    "RecordIOError",
    "RecordLoader",
    "SynthConfig",
    "pack",
    "pack_img",
    "read_bin",
    "synth_dataset",
    "unpack",
    "unpack_img",
    "write_bin",
    "write_dataset",
]
