"""The compiled paged-attention kernels against the torch reference on a GPU.

Random block tables (shuffled, garbage in unused entries), random lengths with
block-boundary values, GQA ratios 1/4/8, head sizes 64/128, bf16; the entry
points under the sync checker; a decode step captured in a CUDA graph and
replayed with new lengths, tables and padding rows.
"""

from __future__ import annotations

import pytest
import torch

from actorexec.actors.model.layers.attention import (
    paged_attention,
    reference_paged_attention,
    reference_write_kv,
    write_kv,
)
from tests.actors.model.paged_cases import (
    assert_close,
    kernels,
    make_case,
    reference,
    run_decode,
    run_prefill,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
def random_lengths(gen: torch.Generator, num_reqs: int, block_size: int, longest: int
                   ) -> list[int]:
    """Random lengths with 1, block-boundary and one-past-boundary values mixed in."""
    lens = torch.randint(1, longest, (num_reqs,), generator=gen).tolist()
    specials = [1, block_size, block_size + 1, 2 * block_size, longest]
    for i, s in enumerate(specials[:num_reqs // 2]):
        lens[2 * i] = s
    return lens


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_partitions", [None, 1, 7])
@pytest.mark.parametrize("num_reqs", [1, 5, 64])
def test_gpu_decode_matches_reference(group, head_dim, num_partitions, num_reqs):
    gen = torch.Generator().manual_seed(group * 1000 + head_dim + num_reqs)
    lens = random_lengths(gen, num_reqs, 16, 1500)
    case = make_case(lens, [1] * num_reqs, num_heads=8 * group // 2, num_kv_heads=4,
                     head_dim=head_dim, block_size=16, dtype=torch.bfloat16, device="cuda",
                     seed=num_reqs, num_partitions=num_partitions)
    assert_close(run_decode(case), reference(case))


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_prefill_matches_reference_over_cached_prefixes(group, head_dim):
    gen = torch.Generator().manual_seed(group * 7 + head_dim)
    num_reqs = 9
    query_lens = torch.randint(1, 300, (num_reqs,), generator=gen).tolist()
    query_lens[:3] = [1, 1, 16]                                       # decode rows, one block
    cached = torch.randint(0, 900, (num_reqs,), generator=gen).tolist()
    cached[3:5] = [0, 32]                                             # fresh, block-aligned
    seq_lens = [c + n for c, n in zip(cached, query_lens, strict=True)]
    case = make_case(seq_lens, query_lens, num_heads=4 * group, num_kv_heads=4,
                     head_dim=head_dim, block_size=16, dtype=torch.bfloat16, device="cuda",
                     seed=group)
    assert_close(run_prefill(case), reference(case))


@pytest.mark.parametrize("block_size", [8, 32, 128])
def test_gpu_kernels_with_other_block_sizes(block_size):
    gen = torch.Generator().manual_seed(block_size)
    lens = random_lengths(gen, 12, block_size, 700)
    decode = make_case(lens, [1] * 12, num_heads=32, num_kv_heads=8, head_dim=128,
                       block_size=block_size, dtype=torch.bfloat16, device="cuda")
    assert_close(run_decode(decode), reference(decode))
    prefill = make_case([c + 40 for c in lens], [40] * 12, num_heads=32, num_kv_heads=8,
                        head_dim=128, block_size=block_size, dtype=torch.bfloat16,
                        device="cuda", table_dtype=torch.int64)
    assert_close(run_prefill(prefill), reference(prefill))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_write_kv_matches_reference(dtype):
    kv = torch.randn(2, 40, 16, 8, 128, device="cuda").to(dtype)
    qkv = torch.randn(300, 48 * 128, device="cuda").to(dtype)
    k, v = qkv[:, 32 * 128:40 * 128].view(300, 8, 128), qkv[:, 40 * 128:].view(300, 8, 128)
    slots = torch.randperm(40 * 16, device="cuda")[:300]
    slots[::7] = -1
    expected = kv.clone()
    reference_write_kv(expected, k, v, slots)
    kernels().write_kv_triton(kv, k, v, slots)
    assert torch.equal(kv, expected)


def test_gpu_entry_points_do_not_synchronise():
    for query_lens in ([1, 1, 1, 1], [30, 1, 7, 1]):
        case = make_case([70, 1, 300, 16], query_lens, num_heads=32, num_kv_heads=8,
                         head_dim=128, block_size=16, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(case.q.shape[0], 8, 128, device="cuda", dtype=torch.bfloat16)
        paged_attention(case.q, case.kv_cache, case.meta, case.scale)  # compile outside
        write_kv(case.kv_cache, k, k, case.meta.slot_mapping)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            write_kv(case.kv_cache, k, k, case.meta.slot_mapping)
            out = paged_attention(case.q, case.kv_cache, case.meta, case.scale)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert_close(out, reference(case))


def test_gpu_decode_graph_replays_with_new_lengths_tables_and_padding():
    rows, hkv, hq, d, bs = 8, 8, 32, 128, 16
    first = make_case([5, 16, 17, 200, 33, 1, 64, 900], [1] * rows, num_heads=hq,
                      num_kv_heads=hkv, head_dim=d, block_size=bs, dtype=torch.bfloat16,
                      device="cuda", spare_blocks=200)
    kv, meta = first.kv_cache, first.meta
    q = first.q.clone()
    k_new = torch.randn(rows, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_new = torch.randn_like(k_new)

    def step() -> torch.Tensor:
        write_kv(kv, k_new, v_new, meta.slot_mapping)
        return paged_attention(q, kv, meta, first.scale)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()                                                        # compile, not captured
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    # Next "step": other lengths and blocks in the same buffers, two padding rows.
    gen = torch.Generator().manual_seed(3)
    num_blocks = kv.shape[1]
    lens = [0, 31, 48, 1, 0, 600, 17, 16]
    table = torch.stack([torch.randperm(num_blocks, generator=gen)[:meta.block_table.shape[1]]
                         for _ in range(rows)]).to(meta.block_table.dtype)
    slots = [int(table[r, (n - 1) // bs]) * bs + (n - 1) % bs if n else -1
             for r, n in enumerate(lens)]
    meta.block_table.copy_(table)
    meta.seq_lens.copy_(torch.tensor(lens))
    meta.slot_mapping.copy_(torch.tensor(slots))
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()

    expected = reference_paged_attention(q.float(), kv.float(), meta, first.scale)
    assert (out[0] == 0).all() and (out[4] == 0).all()
    assert_close(out, expected)
    flat_k = kv[0].flatten(0, 1)
    for r, s in enumerate(slots):
        if s >= 0:
            assert torch.equal(flat_k[s], k_new[r])

