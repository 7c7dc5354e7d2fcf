"""Is ``synth`` learnable, and does it transfer? A small CNN on CPU, verified on held-out pairs.

Trains a 4-stage CNN (about 0.5M parameters) with a CosFace head (s=30, m=0.35) on a ``synth``
set of 200 identities x 20 images, and after each epoch reports verification accuracy (best
threshold) on ``val.bin``, whose identities are not in the training set. Not a test: it takes
minutes. It uses plain torch for the head, so it depends on nothing but the data package.

    python benchmarks/synth_learnability.py --epochs 8
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from partialfc.data import RecordLoader, SynthConfig, read_bin, synth_dataset


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    )


def _verification_accuracy(net: nn.Module, images: torch.Tensor, issame: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():  # embedding of image + its mirror, as insightface evaluates
        emb = torch.cat([net(x) + net(x.flip(-1)) for x in images.split(256)])
    net.train()
    emb = F.normalize(emb)
    sim = (emb[0::2] * emb[1::2]).sum(1).numpy()
    return max(float(((sim > t) == issame).mean()) for t in np.linspace(-1, 1, 401))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--images-per-identity", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="pfc-synth-learn-") as root:
        cfg = SynthConfig(identities=args.identities, images_per_identity=args.images_per_identity)
        synth_dataset(root, cfg)
        bins, issame = read_bin(f"{root}/val.bin")
        val = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in bins])
        val_t = torch.from_numpy(val).permute(0, 3, 1, 2).float().sub(127.5).mul(1 / 127.5)
        same = np.asarray(issame)
        net = nn.Sequential(
            _block(3, 16),
            _block(16, 32),
            _block(32, 64),
            _block(64, 128),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(128 * 7 * 7, 128),
            nn.BatchNorm1d(128),
        )
        centres = nn.Parameter(torch.randn(cfg.identities, 128) * 0.01)
        opt = torch.optim.SGD([*net.parameters(), centres], lr=0.1, momentum=0.9, weight_decay=5e-4)
        loader = RecordLoader(root, 128, num_workers=args.workers)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=args.epochs * len(loader))
        start = time.perf_counter()
        print("epoch | seconds | loss   | held-out verification accuracy")
        for epoch in range(args.epochs):
            for x, y in loader:
                cos = F.linear(F.normalize(net(x)), F.normalize(centres))
                loss = F.cross_entropy(30 * (cos - 0.35 * F.one_hot(y, cfg.identities)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            acc = _verification_accuracy(net, val_t, same)
            print(
                f"{epoch:5d} | {time.perf_counter() - start:7.0f} | {loss.item():6.3f} | {acc:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
