"""Random paged-KV cases: shuffled block tables, garbage in unused entries."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actorexec.actors.model.layers.attention import AttentionMetadata, reference_write_kv

@dataclass
class PagedCase:
    """A filled cache, this step's queries and the metadata that describes them."""

    q: torch.Tensor            # [T, Hq, D]
    kv_cache: torch.Tensor     # [2, num_blocks, block_size, Hkv, D]
    meta: AttentionMetadata
    scale: float


def make_case(seq_lens: list[int], query_lens: list[int], num_heads: int, num_kv_heads: int,
              head_dim: int, block_size: int, dtype: torch.dtype, device: str = "cpu",
              seed: int = 0, num_partitions: int | None = None, spare_blocks: int = 3,
              table_dtype: torch.dtype = torch.int32) -> PagedCase:
    """Requests with shuffled, non-contiguous blocks; every cached token (this step's too) set.

    Rows with ``seq_len == 0`` are padding rows (query length 0, or 1 in decode
    layouts): no blocks, garbage block-table entries.
    """
    gen = torch.Generator().manual_seed(seed)
    num_reqs = len(seq_lens)
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    width = max(1, max(blocks_per_req))
    num_blocks = sum(blocks_per_req) + spare_blocks
    order = torch.randperm(num_blocks, generator=gen)             # block ids shuffled
    # Garbage in unused table entries: the kernels must never read them.
    table = torch.randint(0, num_blocks, (num_reqs, width), generator=gen)
    used = 0
    for r, n in enumerate(blocks_per_req):
        table[r, :n] = order[used:used + n]
        used += n
    kv = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    total = sum(query_lens)
    q = torch.randn(total, num_heads, head_dim, generator=gen)
    qsl = torch.zeros(num_reqs + 1, dtype=torch.int64)
    qsl[1:] = torch.cumsum(torch.tensor(query_lens), 0)
    # Slots of this step's tokens (already written, as write_kv would have).
    slots = []
    for r, (s, n) in enumerate(zip(seq_lens, query_lens, strict=True)):
        for pos in range(s - n, s):
            slots.append(int(table[r, pos // block_size]) * block_size + pos % block_size)
    if not slots:
        slots = [-1] * total
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_table=table.to(table_dtype).to(device),
        seq_lens=torch.tensor(seq_lens, dtype=table_dtype, device=device),
        query_start_loc=qsl.to(table_dtype).to(device), max_query_len=max(query_lens, default=1),
        max_seq_len=max(seq_lens, default=0),
        is_decode=all(n == 1 for n in query_lens), num_partitions=num_partitions)
    return PagedCase(q.to(dtype).to(device), kv.to(dtype).to(device), meta, head_dim ** -0.5)


def write_rows(case: PagedCase, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The cache after the reference write of k, v through the case's slot mapping."""
    expected = case.kv_cache.clone()
    reference_write_kv(expected, k, v, case.meta.slot_mapping)
    return expected
