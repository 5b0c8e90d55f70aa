"""Triton kernel that scatters a step's new K/V rows into the paged cache.

One program per token: it reads the token's slot and copies its
``[num_kv_heads, head_dim]`` K and V rows into ``(slot // block_size,
slot % block_size)`` of the cache. A negative slot marks a padding row (a
CUDA-graph replay pads the batch): the program returns without writing.
The grid is the (host-known) number of tokens, so the launch can be captured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr,                   # [T, Hkv, D] (any strides; last dim contiguous or not)
    k_cache_ptr, v_cache_ptr,       # [num_blocks, block_size, Hkv, D] views of one layer's cache
    slot_ptr,                       # [T] int: block_id * block_size + offset, < 0 = skip
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_cb, stride_cs, stride_ch, stride_cd,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    H_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, D_PAD)
    mask = (h[:, None] < NUM_KV_HEADS) & (d[None, :] < HEAD_DIM)          # [H_PAD, D_PAD]
    dst = block * stride_cb + offset * stride_cs + h[:, None] * stride_ch + d[None, :] * stride_cd
    k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :] * stride_kd,
                mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :] * stride_vd,
                mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_triton(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """k, v [T, Hkv, D] -> their slots of ``kv_cache`` [2, num_blocks, block_size, Hkv, D].

    Rows whose slot is negative are skipped. No host synchronisation.
    """
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        *k.stride(), *v.stride(), *k_cache.stride(),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        H_PAD=triton.next_power_of_2(num_kv_heads), D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=kv_cache.shape[2], num_warps=4)
