import itertools

import pytest

import partialfc as pfc


@pytest.mark.parametrize("classes,world", [(10, 1), (10, 3), (7, 7), (1_000_003, 8), (5, 2)])
def test_shards_tile_the_classes_in_rank_order(classes: int, world: int) -> None:
    ranges = [pfc.shard_range(classes, world, r) for r in range(world)]
    assert ranges[0][0] == 0
    for (s0, n0), (s1, _) in itertools.pairwise(ranges):
        assert s0 + n0 == s1, "contiguous, no gap or overlap"
    assert sum(n for _, n in ranges) == classes
    counts = [n for _, n in ranges]
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True), "the larger shards come first"


def test_design_formula_example() -> None:
    assert [pfc.shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]


@pytest.mark.parametrize(
    "args,match",
    [
        ((10, 0, 0), "world_size"),
        ((10, 3, 3), "rank"),
        ((10, 3, -1), "rank"),
        ((2, 3, 0), "num_classes"),
    ],
)
def test_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pfc.shard_range(*args)
