"""Split-KV ("flash-decoding") paged attention for one query token per request.

Stage 1: a program per (request, KV head, partition). It loads the query rows
of every query head that shares the KV head (GQA: K/V are read once for the
whole group), walks its partition of the sequence tile by tile through the
block table, and keeps an online softmax in fp32. Stage 2 (only when there is
more than one partition) merges the partitions by their log-sum-exp.

The grid depends only on host-known sizes (number of requests, KV heads and
the partition count), never on sequence lengths, so both launches can be
captured in a CUDA graph. Each request's sequence is cut into
``num_partitions`` equal, tile-aligned pieces on the device; programs past
the end of a short sequence return at once. A request with ``seq_len == 0``
(a padding row of a graph replay) yields zeros.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
DECODE_TILE = 32           # tokens per K/V tile (spans several blocks when block_size < 32)
MAX_PARTITIONS = 64


@triton.jit
def _partition_len(seq_len, num_partitions, TILE: tl.constexpr):
    """Tokens per partition: ceil(seq_len / P) rounded up to whole tiles, at least one tile."""
    per = ((seq_len + num_partitions - 1) // num_partitions + TILE - 1) // TILE * TILE
    return tl.maximum(per, TILE)


@triton.jit
def _decode_partition_kernel(
    q_ptr,                          # [R, Hq, D]
    k_cache_ptr, v_cache_ptr,       # [num_blocks, block_size, Hkv, D]
    block_table_ptr,                # [R, max_blocks] int
    seq_lens_ptr,                   # [R] int
    out_ptr,                        # [R, Hq, D] (used when SINGLE)
    part_out_ptr,                   # [R, Hq, P, D] fp32 (used when not SINGLE)
    part_lse_ptr,                   # [R, Hq, P] fp32, log2 domain
    qk_scale,                       # softmax scale * log2(e)
    num_partitions,
    stride_qr, stride_qh, stride_qd,
    stride_cb, stride_cs, stride_ch, stride_cd,
    stride_btr, stride_btb,
    stride_or, stride_oh, stride_od,
    GROUP: tl.constexpr, G_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr,
    SINGLE: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    req = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req).to(tl.int32)
    part_len = _partition_len(seq_len, num_partitions, TILE)
    start = part * part_len
    if not SINGLE:
        if start >= seq_len:  # nothing here; the reduce kernel masks this partition out
            return
    end = tl.minimum(start + part_len, seq_len)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    heads = kv_head * GROUP + g                                           # [G_PAD]
    row_mask = (g[:, None] < GROUP) & (d[None, :] < HEAD_DIM)             # [G_PAD, D_PAD]
    q = tl.load(q_ptr + req * stride_qr + heads[:, None] * stride_qh + d[None, :] * stride_qd,
                mask=row_mask, other=0.0)                                 # [G_PAD, D_PAD]

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    kv_head_off = kv_head.to(tl.int64) * stride_ch
    for tile_start in range(start, end, TILE):
        tok = tile_start + tl.arange(0, TILE)                             # [TILE]
        tok_mask = tok < end
        block = tl.load(block_table_ptr + req * stride_btr + (tok // BLOCK_SIZE) * stride_btb,
                        mask=tok_mask, other=0).to(tl.int64)
        row = block * stride_cb + (tok % BLOCK_SIZE).to(tl.int64) * stride_cs + kv_head_off
        kv_off = row[:, None] + d[None, :] * stride_cd                    # [TILE, D_PAD]
        kv_mask = tok_mask[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)       # [TILE, D_PAD]
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        if IEEE_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))                                    # [G_PAD, TILE]
        s = tl.where(tok_mask[None, :], s * qk_scale, float("-inf"))
        # Every tile holds at least one valid token, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE_DOT:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]                     # zeros when empty
    if SINGLE:
        tl.store(out_ptr + req * stride_or + heads[:, None] * stride_oh + d[None, :] * stride_od,
                 out.to(out_ptr.dtype.element_ty), mask=row_mask)
    else:
        # Partial buffers are contiguous: [R, Hq, P, D] and [R, Hq, P].
        num_heads = tl.num_programs(1) * GROUP
        slot = (req * num_heads + heads) * num_partitions + part          # [G_PAD]
        tl.store(part_out_ptr + slot[:, None] * HEAD_DIM + d[None, :], out, mask=row_mask)
        tl.store(part_lse_ptr + slot, m_i + tl.log2(l_i), mask=g < GROUP)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr,     # [R, Hq, P, D] fp32, [R, Hq, P] fp32
    seq_lens_ptr,                   # [R] int
    out_ptr,                        # [R, Hq, D]
    num_partitions,
    stride_or, stride_oh, stride_od,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, P_PAD: tl.constexpr, TILE: tl.constexpr,
):
    req = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + req).to(tl.int32)
    # The same split as stage 1: only partitions that started inside the sequence wrote.
    part_len = _partition_len(seq_len, num_partitions, TILE)
    num_valid = (seq_len + part_len - 1) // part_len
    p = tl.arange(0, P_PAD)
    d = tl.arange(0, D_PAD)
    p_mask = p < num_valid
    base = (req * tl.num_programs(1) + head) * num_partitions
    lse = tl.load(part_lse_ptr + base + p, mask=p_mask, other=float("-inf"))    # [P_PAD]
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)                        # seq_len == 0
    w = tl.exp2(lse - top)                                                # 0 where masked
    parts = tl.load(part_out_ptr + (base + p)[:, None] * HEAD_DIM + d[None, :],
                    mask=p_mask[:, None] & (d[None, :] < HEAD_DIM), other=0.0)  # [P_PAD, D_PAD]
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + req * stride_or + head * stride_oh + d * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_partitions(num_reqs: int, num_kv_heads: int, device: torch.device) -> int:
    """About eight programs per SM (a power of two, 1..64): small batches split the
    sequence to fill the machine; large ones get a few waves of equal programs.

    On an H200 (132 SMs) with 8 KV heads: 64 at batch 1, 16 at batch 8, 2 at batch 64,
    1 (no reduce kernel) from batch 132 on. Costs of splitting: the fp32 partials
    ([R, Hq, P, D]) and one more launch, small next to reading the K/V.
    """
    sms = 132 if device.type != "cuda" else _num_sms(
        device.index if device.index is not None else torch.cuda.current_device())
    want = 8 * sms // max(1, num_reqs * num_kv_heads)
    return min(MAX_PARTITIONS, 1 << max(0, want.bit_length() - 1))  # largest power of 2 <= want


def decode_attention_triton(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float,
                            num_partitions: int | None = None) -> torch.Tensor:
    """q [R, Hq, D] (one token per request) -> [R, Hq, D], reading K/V in place.

    ``kv_cache`` [2, num_blocks, block_size, Hkv, D]; ``block_table`` [R, >= blocks of the
    longest request] int32/int64; ``seq_lens`` [R] int32/int64 (tokens in the cache,
    this step's token included; 0 = padding row -> zeros). No host synchronisation.
    """
    num_reqs, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    if seq_lens.shape[0] != num_reqs or q.dtype != kv_cache.dtype:
        raise ValueError(f"decode attention needs one query per request and q in the cache's "
                         f"dtype: q {tuple(q.shape)} {q.dtype}, {seq_lens.shape[0]} requests, "
                         f"cache {kv_cache.dtype}")
    group = num_heads // num_kv_heads
    parts = num_partitions or default_num_partitions(num_reqs, num_kv_heads, q.device)
    parts = max(1, min(parts, MAX_PARTITIONS))
    out = torch.empty_like(q)
    if num_reqs == 0:
        return out
    single = parts == 1
    if single:
        part_out = part_lse = out  # unused
    else:
        part_out = torch.empty(num_reqs, num_heads, parts, head_dim, dtype=torch.float32,
                               device=q.device)
        part_lse = torch.empty(num_reqs, num_heads, parts, dtype=torch.float32, device=q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    d_pad = triton.next_power_of_2(head_dim)
    _decode_partition_kernel[(num_reqs, num_kv_heads, parts)](
        q, k_cache, v_cache, block_table, seq_lens, out, part_out, part_lse,
        scale * LOG2E, parts, *q.stride(), *k_cache.stride(), *block_table.stride(),
        *out.stride(),
        GROUP=group, G_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, D_PAD=d_pad, BLOCK_SIZE=block_size, TILE=DECODE_TILE,
        SINGLE=single, IEEE_DOT=q.dtype == torch.float32, num_warps=4, num_stages=2)
    if not single:
        _decode_reduce_kernel[(num_reqs, num_heads)](
            part_out, part_lse, seq_lens, out, parts, *out.stride(),
            HEAD_DIM=head_dim, D_PAD=d_pad, P_PAD=max(2, triton.next_power_of_2(parts)),
            TILE=DECODE_TILE, num_warps=4)
    return out
