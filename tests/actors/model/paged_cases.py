"""Random paged-KV cases: shuffled block tables, garbage in unused entries."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from actorexec.actors.model.layers.attention import (
    AttentionMetadata,
    reference_paged_attention,
)


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


def kernels() -> ModuleType:
    """The Triton kernels (compiled, or interpreted once ``use_triton_interpreter`` ran)."""
    from actorexec.actors.model.layers import triton_attention
    return triton_attention


def reference(case: PagedCase) -> torch.Tensor:
    """The reference on float32 copies of the case (so bf16 kernels are checked against exact)."""
    return reference_paged_attention(case.q.float(), case.kv_cache.float(), case.meta, case.scale)


def assert_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert not out.isnan().any()
    tol = 1e-5 if out.dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


def run_decode(case: PagedCase) -> torch.Tensor:
    m = case.meta
    return kernels().decode_attention_triton(case.q, case.kv_cache, m.block_table, m.seq_lens,
                                             case.scale, m.num_partitions)


def run_prefill(case: PagedCase) -> torch.Tensor:
    m = case.meta
    assert m.query_start_loc is not None
    return kernels().prefill_attention_triton(case.q, case.kv_cache, m.block_table, m.seq_lens,
                                              m.query_start_loc, case.scale)
