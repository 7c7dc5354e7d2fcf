"""Weights & Biases as a sink (rank 0), optional: ``wandb`` is imported when the sink is made.

``WANDB_MODE=offline`` (or ``disabled``) is wandb's own switch and is respected as it is: the run
then writes to ``OUTPUT_DIR/wandb`` only, for a later ``wandb sync``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from partialfc.errors import UserError
from partialfc.metrics.tensorboard import tag

RUN_ID_FILE = "wandb-run-id"  # in the output folder: a resumed run continues the same W&B run


class WandbMissingError(UserError, ImportError):
    """``metrics.wandb_project`` is set but the wandb package is not installed."""

    same_on_every_rank = True


def wandb_available() -> bool:
    """Whether the ``wandb`` package is installed (not imported: it is slow to import)."""
    return importlib.util.find_spec("wandb") is not None


def missing_wandb_problem(project: str) -> str:
    """The one-line problem for a W&B project without the package."""
    return (
        f"metrics.wandb_project = {project!r}: the wandb package is not installed; "
        "pip install 'partialfc[wandb]' (or wandb), or remove metrics.wandb_project"
    )


class WandbSink:
    """Logs every record with ``wandb.log(..., step=step)`` under the same tags as TensorBoard.

    The run's id is kept in ``output_dir/wandb-run-id``, so a resumed run (``resume="allow"``)
    continues the same W&B run; W&B ignores steps below its last, which are the ones redone.

    Args:
        project: the W&B project.
        output_dir: the run's output folder (W&B's files go to ``output_dir/wandb``).
        config: the run's config, shown with the run.

    Raises:
        WandbMissingError: wandb is not installed.
    """

    def __init__(self, project: str, output_dir: str | os.PathLike, config: dict) -> None:
        if not wandb_available():
            raise WandbMissingError(missing_wandb_problem(project))
        import wandb

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        id_file = out / RUN_ID_FILE
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:16] + "\n")
        self._run = wandb.init(
            project=project,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(out),
            name=out.name,
            config=config,
        )

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        tagged = {tag(k): v for k, v in values.items() if tag(k) is not None and math.isfinite(v)}
        self._run.log(tagged, step=step)

    def close(self) -> None:
        self._run.finish()
