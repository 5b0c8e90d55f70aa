"""BlockPool: all-or-nothing allocation, free, double-free detection."""

import pytest

from actorexec.actors.engine.block_pool import BlockPool, cdiv


def test_cdiv_rounds_up():
    assert [cdiv(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_allocate_takes_distinct_blocks_and_free_returns_them():
    pool = BlockPool(num_blocks=8, block_size=4)
    a = pool.allocate(3)
    b = pool.allocate(5)
    assert len(set(a + b)) == 8 and pool.num_free == 0 and pool.num_used == 8
    pool.free(a)
    assert pool.num_free == 3
    assert sorted(pool.allocate(3)) == sorted(a)


def test_allocation_beyond_free_raises_and_takes_nothing():
    pool = BlockPool(num_blocks=4, block_size=16)
    pool.allocate(3)
    with pytest.raises(MemoryError):
        pool.allocate(2)
    assert pool.num_free == 1


def test_double_free_is_refused():
    pool = BlockPool(num_blocks=4, block_size=16)
    blocks = pool.allocate(2)
    pool.free(blocks)
    with pytest.raises(ValueError, match="double free"):
        pool.free(blocks[:1])


def test_blocks_for_counts_partial_blocks():
    pool = BlockPool(num_blocks=4, block_size=16)
    assert pool.blocks_for(1) == 1 and pool.blocks_for(16) == 1 and pool.blocks_for(17) == 2
