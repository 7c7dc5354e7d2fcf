"""``partialfc synth``: a deterministic synthetic face dataset, offline, numpy + Pillow only.

Writes an insightface-layout training set (``train.rec``, ``train.idx``, ``property``) and a
verification set ``val.bin`` of held-out identities (never in the training set), in insightface's
``.bin`` format: half the pairs same identity, half different.

With ``--ijb`` it writes instead a synthetic IJB-B/C tree in insightface's layout
(:mod:`partialfc.data.synth_ijb`), ``--identities`` subjects of held-out identities, for
``partialfc eval-ijb``.

Every image comes from its own seed ``(seed, stream, identity, image)``, so the output is
byte-identical for the same arguments whatever the number of worker processes, and the held-out
identities do not change when ``--identities`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data._pool import ordered_map
from partialfc.data.images import encode_image
from partialfc.data.layout import Property, write_dataset
from partialfc.data.synth_faces import identity_params, render_face
from partialfc.data.verification_bin import write_bin

VAL_BIN_FILE = "val.bin"
# Independent random streams: training identities, held-out identities, pair choice, images.
_TRAIN, _HELD_OUT, _PAIRS = 0, 1, 2


@dataclass(frozen=True)
class SynthConfig:
    """What ``synth`` generates."""

    identities: int = 200
    """Training identities (classes)."""
    images_per_identity: int = 20
    """Images of each training identity."""
    size: int = 112
    """Side of the square images, in pixels."""
    seed: int = 0
    """Seed of everything: same seed, same bytes."""
    val_identities: int = 100
    """Held-out identities in ``val.bin``."""
    val_pairs: int = 1000
    """Pairs in ``val.bin`` (half same, half different); 0 writes no ``val.bin``."""
    quality: int = 90
    """JPEG quality."""
    shuffle: bool = True
    """Store training images in a seeded random order (see ``pack``)."""

    def __post_init__(self) -> None:
        for name in ("identities", "images_per_identity", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_pairs < 0 or self.val_pairs % 2:
            raise ValueError(f"SynthConfig.val_pairs must be even and >= 0, got {self.val_pairs}")
        if self.val_pairs and self.val_identities < 2:
            raise ValueError(
                "SynthConfig.val_identities must be >= 2 for different-identity pairs,"
                f" got {self.val_identities}"
            )
        if not 1 <= self.quality <= 100:
            raise ValueError(f"SynthConfig.quality must be in 1..100, got {self.quality}")


def _image(cfg: SynthConfig, stream: int, identity: int, image: int) -> bytes:
    params = identity_params(np.random.default_rng([cfg.seed, stream, identity]))
    rng = np.random.default_rng([cfg.seed, stream, identity, image + 1])
    return encode_image(render_face(params, rng, cfg.size), ".jpg", cfg.quality)


def _train_task(args: tuple[SynthConfig, int, int]) -> bytes:
    cfg, identity, image = args
    return _image(cfg, _TRAIN, identity, image)


def _pair_task(args: tuple[SynthConfig, int, bool]) -> tuple[bytes, bytes]:
    cfg, pair, same = args
    rng = np.random.default_rng([cfg.seed, _PAIRS, pair])
    a, b = rng.choice(cfg.val_identities, size=2, replace=False)
    if same:
        b = a
    # image indices unique to the pair: two images of one identity are never the same picture
    return _image(cfg, _HELD_OUT, int(a), 2 * pair), _image(cfg, _HELD_OUT, int(b), 2 * pair + 1)


def synth_dataset(
    out_dir: str | os.PathLike[str],
    cfg: SynthConfig | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> Property:
    """Generates the training set and ``val.bin`` into ``out_dir``.

    Args:
        out_dir: output folder (created if missing).
        cfg: what to generate.
        workers: processes (default: all CPUs).
        progress: show progress bars.

    Returns:
        The training set's :class:`Property`.
    """
    cfg = cfg or SynthConfig()
    if workers is None:
        workers = os.cpu_count() or 1
    out = Path(out_dir)
    n = cfg.identities * cfg.images_per_identity
    items = [(i, j) for i in range(cfg.identities) for j in range(cfg.images_per_identity)]
    if cfg.shuffle:
        items = [items[k] for k in np.random.default_rng([cfg.seed, 3]).permutation(n)]
    tasks = [(cfg, i, j) for i, j in items]
    prop = Property(cfg.identities, cfg.size, cfg.size)
    write_dataset(
        out,
        ordered_map(_train_task, tasks, workers, "synth train", progress),
        [i for i, _ in items],
        prop,
    )
    if cfg.val_pairs:
        half = cfg.val_pairs // 2
        issame = np.random.default_rng([cfg.seed, 4]).permutation([True] * half + [False] * half)
        pair_tasks = [(cfg, p, bool(s)) for p, s in enumerate(issame)]
        images: list[bytes] = []
        for first, second in ordered_map(_pair_task, pair_tasks, workers, "synth val", progress):
            images += [first, second]
        write_bin(out / VAL_BIN_FILE, images, issame.tolist())
    return prop
