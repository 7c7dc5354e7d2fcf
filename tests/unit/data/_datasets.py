"""Tiny datasets shared by the data tests (built in a temp folder, in well under a second)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from partialfc.data.packer import EncodeOptions, list_image_folder, pack_images
from partialfc.data.synth import SynthConfig, synth_dataset
from partialfc.data.synth_faces import identity_params, render_face

# 12 identities x 6 images = 72 training images; 4 held-out identities, 20 pairs.
SMALL = SynthConfig(identities=12, images_per_identity=6, val_identities=4, val_pairs=20)


def make_synth(out: Path, cfg: SynthConfig = SMALL) -> Path:
    synth_dataset(out, cfg, workers=1)
    return out


def write_image_folder(
    root: Path, identities: int = 4, per_identity: int = 3, size: int = 48, suffix: str = ".png"
) -> Path:
    """``root/idNN/MM.png``: synthetic faces saved as image files, as a user's folder would be."""
    for i in range(identities):
        params = identity_params(np.random.default_rng([9, i]))
        folder = root / f"id{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            img = render_face(params, np.random.default_rng([9, i, j]), size)
            Image.fromarray(img).save(folder / f"{j:02d}{suffix}")
    return root


def make_packed(out: Path, images: Path, img_fmt: str = ".png", **kwargs) -> Path:
    """Packs ``images`` (an image folder) into ``out``."""
    paths, labels, num_classes = list_image_folder(images)
    pack_images(
        paths,
        labels,
        num_classes,
        out,
        EncodeOptions(img_fmt=img_fmt),
        workers=1,
        progress=False,
        **kwargs,
    )
    return out


def damage_record(root: Path, key: int, *, soi: bool = False) -> str:
    """Inverts 64 bytes inside the entropy-coded data of record ``key``'s JPEG in
    ``root/train.rec``, at the first offset where the structural check sees it (decoders turn
    it into wrong pixels without an error); ``soi=True`` breaks the SOI marker instead (DALI's
    decoder then fails). Returns what the check says."""
    from partialfc.data.jpeg import jpeg_damage
    from partialfc.data.layout import FaceRecord
    from partialfc.data.recordio import unpack

    record = FaceRecord(root)
    raw = record.reader.read_idx(key)
    payload = unpack(raw)[1]
    start = record.reader.idx[key] + 8 + len(raw) - len(payload)  # after magic, length, header
    record.close()
    if soi:
        bad = b"\0\0" + payload[2:]
    else:
        scan = payload.index(b"\xff\xda") + 16
        for offset in range(scan, len(payload) - 64):
            bad = bytearray(payload)
            bad[offset : offset + 64] = bytes(b ^ 0xFF for b in bad[offset : offset + 64])
            if jpeg_damage(bytes(bad)) is not None:
                break
        else:
            raise AssertionError(f"no 64-byte inversion of key {key} is structurally visible")
    with open(root / "train.rec", "r+b") as f:
        f.seek(start)
        f.write(bytes(bad))
    return jpeg_damage(bytes(bad))
