"""``partialfc demo``: the sharded head learning identities on two CPU ranks, offline.

Until the full trainer lands, the demo trains what partialfc is built around: a PartialFC head
(ArcFace, negative sampling) sharded over two gloo processes, with SparseSGD, on synthetic
embeddings. Every identity has a hidden true direction; each sample is that direction plus noise.
After training, each held-out sample is matched against the learnt class centres of *all* shards
(each rank scores its own shard, the best match is agreed on with one all-gather): identification
accuracy far above chance shows the sharded softmax learnt every identity, whichever rank owns it.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import partialfc as pfc
from partialfc.distributed import all_gather_no_grad
from partialfc.distributed.local import run_local


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identities", type=int, default=10_000, help="number of classes")
    parser.add_argument("--dim", type=int, default=128, help="embedding width")
    parser.add_argument("--ranks", type=int, default=2, help="gloo processes sharing the head")
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--batch", type=int, default=512, help="global batch")
    parser.add_argument("--sample-rate", type=float, default=0.2, help="PartialFC sample rate")
    parser.add_argument("--noise", type=float, default=1.0, help="noise relative to the signal")
    parser.add_argument("--seed", type=int, default=0)


def _samples(
    directions: torch.Tensor, count: int, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    identities, dim = directions.shape
    labels = torch.randint(0, identities, (count,), generator=gen)
    noisy = directions[labels] + noise * torch.randn(count, dim, generator=gen) / dim**0.5
    return noisy, labels


@torch.no_grad()
def _identify(head: pfc.PartialFC, x: torch.Tensor) -> torch.Tensor:
    """Global class id of the nearest centre over all shards, for each row of ``x``.

    ``x`` must be the same on every rank: each rank scores it against its own shard.
    """
    scores = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()  # (n, C_r)
    best, where = scores.max(1)
    stats = torch.stack([best, (where + head.class_start).to(best.dtype)])  # (2, n)
    gathered = all_gather_no_grad(stats.unsqueeze(0), head.process_group)  # (W, 2, n)
    winner = gathered[:, 0].argmax(0)
    return gathered[:, 1].gather(0, winner.unsqueeze(0)).squeeze(0).long()


def _train(rank: int, world: int, args: argparse.Namespace) -> None:
    truth = torch.Generator().manual_seed(1234)  # the hidden identities: the same on every rank
    directions = F.normalize(torch.randn(args.identities, args.dim, generator=truth), dim=1)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own samples
    head = pfc.PartialFC(
        pfc.ArcFace(s=32.0, m=0.3),
        args.dim,
        args.identities,
        sample_rate=args.sample_rate,
        seed=args.seed,
    )
    opt = pfc.SparseSGD([head.weight], lr=0.5, momentum=0.9, weight_decay=5e-4)
    local = args.batch // world
    if rank == 0:
        print(
            f"PartialFC: {args.identities:,} identities over {world} ranks "
            f"({head.num_local:,} on rank 0), sample_rate {args.sample_rate}, batch {local * world}"
        )
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = _samples(directions, local, args.noise, gen)
        opt.zero_grad(set_to_none=True)
        loss = head(x, y)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 50 == 0 or step == 1):
            rate = step * local * world / (time.perf_counter() - start)
            print(f"step {step:>5}  loss {loss.item():8.4f}  {rate:8.0f} samples/s", flush=True)
    x, y = _samples(directions, 2048 // world, args.noise, gen)
    x, y = all_gather_no_grad(x, head.process_group), all_gather_no_grad(y, head.process_group)
    accuracy = (_identify(head, x) == y).float().mean().item()
    if rank == 0:
        print(
            f"held-out identification accuracy: {accuracy:.3f} "
            f"(chance {1 / args.identities:.5f}) after {time.perf_counter() - start:.1f} s"
        )


def run(args: argparse.Namespace) -> int:
    run_local(_train, args.ranks, args)
    return 0
