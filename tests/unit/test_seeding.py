"""One seed-mixing function for every stream: distinct streams and parts never share a seed."""

import itertools

import pytest

from partialfc.seeding import generator, mix_seed


def test_sums_that_collide_get_distinct_seeds() -> None:
    # The old DALI seed was seed + 7919 * rank: (7919, rank 0) and (0, rank 1) were one stream.
    assert mix_seed("dali", 7919, 0) != mix_seed("dali", 0, 1)
    seeds = {mix_seed("dali", s, r) for s, r in itertools.product(range(200), range(16))}
    assert len(seeds) == 200 * 16


def test_streams_with_equal_numbers_differ_and_are_reproducible() -> None:
    assert mix_seed("order", 3, 5) != mix_seed("flips", 3, 5)
    assert mix_seed("sampling", 1, 2, 3) == mix_seed("sampling", 1, 2, 3)
    assert mix_seed("x", 12, 3) != mix_seed("x", 1, 23)  # parts are separated, not concatenated
    a, b = generator("order", 0, 1), generator("order", 0, 1)
    assert a.initial_seed() == b.initial_seed() < 2**63


@pytest.mark.parametrize("bits", [31, 32, 63])
def test_width(bits: int) -> None:
    assert all(0 <= mix_seed("w", i, bits=bits) < 2**bits for i in range(1000))
    with pytest.raises(ValueError, match="bits"):
        mix_seed("w", bits=0)
