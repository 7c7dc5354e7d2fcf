"""Reading and writing runs: resharding DCP checkpoints and what a saved run says about itself.

:mod:`~partialfc.checkpoint.store` writes and reads the checkpoints (class centres row-sharded
with their global range, so N ranks' checkpoint resumes on M); :mod:`~partialfc.checkpoint.run`
reads a checkpoint's ``config.json`` and backbone weights. The trainer, ``eval``, ``export`` and
the converters all use this package; it imports nothing from :mod:`partialfc.train`.
"""

from partialfc.checkpoint.run import (
    CONFIG_FILE,
    SavedRun,
    load_backbone,
    read_run,
    upgrade_flat_margin,
)
from partialfc.checkpoint.store import (
    CENTERS_KEY,
    COMPLETE,
    STEP_DIR,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load,
    local_rows,
    quiet_sharded_tensor,
    read_class_centers,
    resolve,
    row_sharded,
    save,
    stored_entries,
)

__all__ = [
    "CENTERS_KEY",
    "COMPLETE",
    "CONFIG_FILE",
    "STEP_DIR",
    "SavedRun",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load",
    "load_backbone",
    "local_rows",
    "quiet_sharded_tensor",
    "read_class_centers",
    "read_run",
    "resolve",
    "row_sharded",
    "save",
    "stored_entries",
    "upgrade_flat_margin",
]
