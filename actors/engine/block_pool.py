"""Paged KV-cache block bookkeeping: which block ids are free.

Pure Python on purpose: the engine decides which block ids each request
owns and sends them in the ``SchedulerOutput``; workers only index their
preallocated cache with them. Every rank was given the same ``num_blocks``,
so one id means the same slots everywhere.
"""

from __future__ import annotations

from collections import deque


def cdiv(a: int, b: int) -> int:
    """Ceiling division (blocks needed for ``a`` tokens of ``b`` per block)."""
    return -(-a // b)


class BlockPool:
    """A free list of KV block ids ``0 .. num_blocks - 1``.

    Freed blocks go to the back of the queue, so a block that was just
    released is the last to be reused (easier to spot use-after-free in tests).
    Allocation is all-or-nothing: a request never holds half of what it asked.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, "
                             f"got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return cdiv(num_tokens, self.block_size)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Takes ``n`` free blocks; raises ``MemoryError`` (taking none) if fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            raise MemoryError(f"asked for {n} KV blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Returns blocks to the pool; freeing a block that is not in use is a bug."""
        for b in blocks:
            if b not in self._used:
                raise ValueError(f"block {b} is not allocated (double free?)")
        for b in blocks:
            self._used.discard(b)
            self._free.append(b)
