"""Varlen paged attention (prefill, chunked prefill, mixed steps), K/V read in place.

Every request's new tokens have already been written to the cache, so a
query at position ``ctx + i`` (``ctx`` = tokens cached before this step)
simply attends to cache positions ``0 .. ctx + i`` of its own block table:
the cached prefix and the causal part of its own chunk in one loop.

A program handles ``BLOCK_Q`` consecutive query tokens of one request times
all ``GROUP`` query heads of one KV head, flattened into ``BLOCK_M`` rows of
one matrix (row = token * G_PAD + head in group), so each K/V tile is loaded
once per group and fed to tensor cores. Which request a program serves is
found on the device by a binary search over ``query_start_loc``: request r's
query blocks start at program ``query_start_loc[r] // BLOCK_Q + r``, which
leaves room for its ``ceil(q_len / BLOCK_Q)`` blocks, so the grid
``num_tokens // BLOCK_Q + num_reqs`` depends only on host-known sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from actorexec.actors.model.layers.triton_decode_attention import LOG2E

PREFILL_ROWS = 64      # BLOCK_M: query rows (tokens x heads of a group) per program
PREFILL_TILE = 32      # keys per tile


@triton.jit
def _find_request(query_start_ptr, pid, num_reqs, BLOCK_Q: tl.constexpr):
    """The last request r whose first query block ``qsl[r] // BLOCK_Q + r`` is <= pid."""
    lo: tl.int32 = 0
    hi: tl.int32 = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_ptr + mid).to(tl.int32) // BLOCK_Q + mid
        if first_block <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _prefill_kernel(
    q_ptr,                          # [T, Hq, D]
    k_cache_ptr, v_cache_ptr,       # [num_blocks, block_size, Hkv, D]
    block_table_ptr,                # [R, max_blocks] int
    seq_lens_ptr,                   # [R] int: tokens in the cache after this step
    query_start_ptr,                # [R + 1] int
    out_ptr,                        # [T, Hq, D]
    qk_scale, num_reqs,
    stride_qt, stride_qh, stride_qd,
    stride_cb, stride_cs, stride_ch, stride_cd,
    stride_btr, stride_btb,
    stride_ot, stride_oh, stride_od,
    GROUP: tl.constexpr, G_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    TILE: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    req = _find_request(query_start_ptr, pid, num_reqs, BLOCK_Q)
    q_start = tl.load(query_start_ptr + req).to(tl.int32)
    q_len = tl.load(query_start_ptr + req + 1).to(tl.int32) - q_start
    first = (pid - (q_start // BLOCK_Q + req)) * BLOCK_Q   # first query index of this block
    if first >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req).to(tl.int32)
    ctx = seq_len - q_len                                  # tokens cached before this step

    rows = tl.arange(0, BLOCK_M)
    q_idx = first + rows // G_PAD                          # [BLOCK_M] query index in request
    g = rows % G_PAD
    row_valid = (q_idx < q_len) & (g < GROUP)
    token = (q_start + q_idx).to(tl.int64)
    heads = kv_head * GROUP + g
    d = tl.arange(0, D_PAD)
    io_mask = row_valid[:, None] & (d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + token[:, None] * stride_qt + heads[:, None] * stride_qh
                + d[None, :] * stride_qd, mask=io_mask, other=0.0)   # [BLOCK_M, D_PAD]
    q_pos = tl.where(row_valid, ctx + q_idx, -1)           # last key each row may see

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    kv_end = ctx + tl.minimum(first + BLOCK_Q, q_len)      # keys this block needs
    kv_head_off = kv_head.to(tl.int64) * stride_ch
    req64 = req.to(tl.int64)
    for tile_start in range(0, kv_end, TILE):
        tok = tile_start + tl.arange(0, TILE)              # [TILE]
        tok_mask = tok < kv_end
        block = tl.load(block_table_ptr + req64 * stride_btr + (tok // BLOCK_SIZE) * stride_btb,
                        mask=tok_mask, other=0).to(tl.int64)
        row = block * stride_cb + (tok % BLOCK_SIZE).to(tl.int64) * stride_cs + kv_head_off
        kv_off = row[:, None] + d[None, :] * stride_cd      # [TILE, D_PAD]
        kv_mask = tok_mask[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        if IEEE_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))                      # [BLOCK_M, TILE]
        s = tl.where(tok[None, :] <= q_pos[:, None], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows with nothing visible yet (padding rows) keep m = -inf: shift by 0, not -inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE_DOT:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + token[:, None] * stride_ot + heads[:, None] * stride_oh
             + d[None, :] * stride_od, out.to(out_ptr.dtype.element_ty), mask=io_mask)


def prefill_attention_triton(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                             seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """q [T, Hq, D] (requests' tokens back to back) -> [T, Hq, D], causal within each request.

    ``query_start_loc`` [R + 1] and ``seq_lens`` [R] (int32/int64) live on the device;
    this step's K/V must already be in the cache. Rows of tokens past
    ``query_start_loc[R]`` (padding) are left unwritten. No host synchronisation.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    num_reqs = query_start_loc.shape[0] - 1
    if q.dtype != kv_cache.dtype:
        raise ValueError(f"prefill attention needs q in the cache's dtype: {q.dtype} vs "
                         f"{kv_cache.dtype}")
    out = torch.empty_like(q)
    if num_tokens == 0 or num_reqs == 0:
        return out
    group = num_heads // num_kv_heads
    g_pad = triton.next_power_of_2(group)
    block_q = max(1, PREFILL_ROWS // g_pad)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    grid = (num_tokens // block_q + num_reqs, num_kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_table, seq_lens, query_start_loc, out,
        scale * LOG2E, num_reqs, *q.stride(), *k_cache.stride(), *block_table.stride(),
        *out.stride(),
        GROUP=group, G_PAD=g_pad, HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_Q=block_q, BLOCK_M=block_q * g_pad, TILE=PREFILL_TILE,
        IEEE_DOT=q.dtype == torch.float32, num_warps=4, num_stages=2)
    return out
