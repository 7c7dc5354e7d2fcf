"""Verification during and after training, with the embedding work split across ranks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partialfc.distributed import all_gather_no_grad
from partialfc.errors import UserError
from partialfc.eval.pair_sets import load_pair_set
from partialfc.eval.verification import VerificationResult, embed_with_norms, fold_accuracy
from partialfc.train.runtime import Runtime


@torch.no_grad()
def evaluate_sets(
    backbone: nn.Module, paths: list[str], batch_size: int, rt: Runtime
) -> dict[str, VerificationResult]:
    """Verification of each set (accuracy, VAL@FAR, XNorm); every rank embeds a slice of it."""
    results = {}
    for path in paths:
        images, issame = load_pair_set(path)
        n = images.shape[0]
        per = -(
            -n // rt.world_size
        )  # ceil: the last slice is padded so the gather sees equal sizes
        mine = images[rt.rank * per : (rt.rank + 1) * per]
        emb, norms = embed_with_norms(backbone, mine, batch_size)  # (<= per, D) unit, (<= per, 2)
        local = torch.cat([emb, norms], dim=1).to(rt.device)  # one gather for both
        padded = F.pad(local, (0, 0, 0, per - local.shape[0]))
        every = all_gather_no_grad(padded, None)[:n].cpu().numpy()
        emb, norms = every[:, : -norms.shape[1]], every[:, -norms.shape[1] :]
        result = fold_accuracy(emb[0::2], emb[1::2], issame)
        results[Path(path).stem] = replace(result, xnorm=float(norms.astype(np.float64).mean()))
    return results


class EvalMetrics:
    """Turns each evaluation into the sinks' keys, keeping every set's best accuracy so far.

    ``eval/<set>`` is the accuracy (the key earlier runs logged); ``eval/<set>/<what>`` for
    ``std``, ``val``, ``val_std``, ``far``, ``xnorm`` and ``best``. Prometheus shows them as
    gauges with a ``set`` label (``partialfc_eval_accuracy{set="lfw"}``, ``partialfc_eval_val``,
    ..., ``partialfc_eval_best_accuracy``). The best is over the whole run: checkpoints carry
    it (:meth:`to_bytes`, :meth:`load`), so a resumed run continues it.
    """

    FILE = "eval-best.json"  # beside the DCP files of a checkpoint

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def to_bytes(self) -> bytes:
        return json.dumps(self.best, indent=2, sort_keys=True).encode()

    def load(self, checkpoint_path: Path) -> None:
        """Takes the best accuracies a checkpoint holds (none in one written before they were kept).

        Raises:
            UserError: the file is not such a record, naming it.
        """
        path = Path(checkpoint_path) / self.FILE
        if not path.exists():
            return
        try:
            best = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(
                f"{path}: not a record of the best evaluation results ({err}); delete it to "
                "start the best-so-far afresh"
            ) from None
        self.best = best

    def __call__(self, results: dict[str, VerificationResult]) -> dict[str, float]:
        out = {}
        for name, r in results.items():
            self.best[name] = max(self.best.get(name, -math.inf), r.accuracy)
            out[f"eval/{name}"] = r.accuracy
            for what in ("std", "val", "val_std", "far", "xnorm"):
                out[f"eval/{name}/{what}"] = getattr(r, what)
            out[f"eval/{name}/best"] = self.best[name]
        return out
