"""How much random damage to a JPEG each check finds: ``jpeg_damage`` vs the decoders.

Takes the JPEG records of a ``synth`` dataset (112x112 faces, as ``pack`` writes them), damages
copies of them with 64-byte bursts at uniformly random offsets, and counts which damaged copies
each check rejects: the structural check (:func:`partialfc.data.jpeg.jpeg_damage`), Pillow (the
torch loader's decoder; the baseline) and DALI's CPU decoder (when DALI is installed). Two kinds of
burst: ``invert`` (every bit of 64 consecutive bytes flipped) and ``random`` (64 bytes overwritten
with random values). Also times the check per image. Prints a table and writes JSON.

    python benchmarks/jpeg_damage.py --flips 1000 --out benchmarks/results/jpeg_damage.json
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from partialfc.data import SynthConfig, synth_dataset
from partialfc.data.jpeg import jpeg_damage
from partialfc.data.layout import FaceRecord
from partialfc.data.recordio import unpack

BURST = 64


def damage(data: bytes, offset: int, kind: str, rng: random.Random) -> bytes:
    """``data`` with ``BURST`` bytes from ``offset`` inverted or replaced by random bytes."""
    out = bytearray(data)
    for i in range(offset, offset + BURST):
        out[i] = out[i] ^ 0xFF if kind == "invert" else rng.randrange(256)
    return bytes(out)


def pillow_rejects(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB")
    except (OSError, ValueError, SyntaxError):
        return True
    return False


class DaliDecoder:
    """DALI's CPU image decoder, one image a run; rebuilt after a failure (the pipeline dies)."""

    def __init__(self) -> None:
        self.pipe = None

    def _build(self):
        import numpy as np
        from nvidia.dali import fn, pipeline_def, types

        self.item: list = []

        @pipeline_def(
            batch_size=1, num_threads=1, device_id=None, exec_async=False, exec_pipelined=False
        )
        def pipeline():
            encoded = fn.external_source(source=lambda: self.item, batch=True)
            return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

        self._np = np
        pipe = pipeline()
        pipe.build()
        return pipe

    def rejects(self, data: bytes) -> bool:
        if self.pipe is None:
            self.pipe = self._build()
        self.item[:] = [self._np.frombuffer(data, dtype=self._np.uint8)]
        try:
            self.pipe.run()
        except RuntimeError:
            self.pipe = None
            return True
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=1000, help="damaged copies per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/jpeg_damage.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pfc-bench-jpeg-") as tmp:
        synth_dataset(tmp, SynthConfig(identities=8, images_per_identity=4, val_pairs=0), workers=1)
        record = FaceRecord(tmp)
        images = [unpack(record.reader.read_idx(k))[1] for k in record.image_keys.tolist()]
        record.close()
    assert all(jpeg_damage(img) is None for img in images), "an intact image was rejected"

    times = []
    for _ in range(5):
        start = time.perf_counter()
        for img in images:
            jpeg_damage(img)
        times.append((time.perf_counter() - start) / len(images) * 1e6)

    dali = DaliDecoder() if importlib.util.find_spec("nvidia.dali") else None
    rows = []
    for kind in ("invert", "random"):
        rng = random.Random(f"{args.seed}-{kind}")
        counts = {"check": 0, "pillow": 0, "dali": 0, "pillow_not_check": 0, "dali_not_check": 0}
        for i in range(args.flips):
            image = images[i % len(images)]
            bad = damage(image, rng.randrange(len(image) - BURST + 1), kind, rng)
            check, pil = jpeg_damage(bad) is not None, pillow_rejects(bad)
            dal = dali.rejects(bad) if dali else False
            counts["check"] += check
            counts["pillow"] += pil
            counts["dali"] += dal
            counts["pillow_not_check"] += pil and not check
            counts["dali_not_check"] += dal and not check
        rows.append({"kind": kind, "flips": args.flips, **counts})

    print(f"{len(images)} JPEGs of {statistics.median(map(len, images)):.0f} bytes (median); "
          f"{BURST}-byte bursts at random offsets")  # fmt: skip
    print(f"{'burst':>7} {'flips':>6} {'check':>8} {'Pillow':>8} {'DALI cpu':>9} "
          f"{'Pillow only':>12} {'DALI only':>10}")  # fmt: skip
    for r in rows:
        pct = {k: f"{100 * r[k] / r['flips']:.1f}%" for k in ("check", "pillow", "dali")}
        dali_pct = pct["dali"] if dali else "n/a"
        print(f"{r['kind']:>7} {r['flips']:>6} {pct['check']:>8} {pct['pillow']:>8} "
              f"{dali_pct:>9} {r['pillow_not_check']:>12} {r['dali_not_check']:>10}")  # fmt: skip
    print(f"check: {statistics.median(times):.1f} us per image (median of 5 passes)")
    result = {
        "burst_bytes": BURST,
        "images": len(images),
        "median_bytes": statistics.median(map(len, images)),
        "seed": args.seed,
        "dali": dali is not None,
        "rows": rows,
        "check_us_per_image": statistics.median(times),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
