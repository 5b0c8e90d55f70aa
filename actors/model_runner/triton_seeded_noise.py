"""Triton kernel for the seeded rows' Exp(1) noise (the GPU form of ``seeded_exponential``).

Bit-for-bit the same hash as ``sampler_ops.seeded_exponential`` (int64 arithmetic
that never overflows), fused into one pass that writes only the rows that have
a seed; other rows' programs return at once and keep the generator's noise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

M32 = tl.constexpr(0xFFFFFFFF)
NOISE_BLOCK = 1024


@triton.jit
def _mul32(x, c: tl.constexpr):
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


@triton.jit
def _seeded_noise_kernel(noise_ptr,          # [R, V] float32, rows written where seeded
                         seeds_ptr,          # [R] int64
                         seeded_ptr,         # [R] bool
                         positions_ptr,      # [R] int
                         vocab, stride_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(seeded_ptr + row) == 0:
        return
    seed = tl.load(seeds_ptr + row).to(tl.int64)
    position = tl.load(positions_ptr + row).to(tl.int64)
    key = _mix32((seed & M32) ^ 0x243F6A88)
    key = _mix32(key ^ ((seed >> 32) & M32))
    key = _mix32(key ^ (position & M32))
    ids = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    bits = _mix32(key ^ _mul32(ids, 0x9E3779B9))
    u = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    tl.store(noise_ptr + row * stride_row + ids, -tl.log(u), mask=ids < vocab)


def write_seeded_noise(noise: torch.Tensor, seeds: torch.Tensor, seeded: torch.Tensor,
                       positions: torch.Tensor) -> None:
    """Overwrites the seeded rows of ``noise`` [R, V] (float32, last dim contiguous)."""
    rows, vocab = noise.shape
    if rows == 0:
        return
    _seeded_noise_kernel[(rows, triton.cdiv(vocab, NOISE_BLOCK))](
        noise, seeds, seeded, positions, vocab, noise.stride(0), BLOCK=NOISE_BLOCK,
        num_warps=4)
