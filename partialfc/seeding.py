"""One seed-mixing function for every random stream of a run.

Each stream (class-centre init, negative sampling, data order and flips, DALI's augmentation,
the trainer's reseed on resume) names itself and the integers it depends on; the seed is a hash of
all of them, so two streams never share a seed unless every part is equal. Sums such as
``seed + 7919 * rank`` collide (seed 7919 on rank 0 is seed 0 on rank 1); a hash does not.
"""

from __future__ import annotations

import hashlib

import torch

SEED_BITS = 63  # torch.Generator takes a non-negative int64


def mix_seed(*parts: int | str, bits: int = SEED_BITS) -> int:
    """A ``bits``-bit seed that depends on every part (blake2b of their text, not a sum).

    Args:
        parts: the stream's name and the integers it depends on, e.g.
            ``mix_seed("sampling", seed, step, rank)``.
        bits: width of the result (DALI takes 32 bits, torch 63).
    """
    if not 0 < bits <= 64:
        raise ValueError(f"bits must be in (0, 64], got {bits}")
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def generator(*parts: int | str, device: torch.device | str | None = None) -> torch.Generator:
    """A torch generator seeded by :func:`mix_seed` of ``parts``."""
    gen = torch.Generator(device=device) if device is not None else torch.Generator()
    gen.manual_seed(mix_seed(*parts))
    return gen
