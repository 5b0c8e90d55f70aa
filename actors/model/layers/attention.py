"""Paged attention over a block-table KV cache, in pure torch.

Every layer owns one cache tensor ``[2, num_blocks, block_size, num_kv_heads,
head_dim]`` (K and V). New K/V are written through ``slot_mapping`` (slot =
block_id * block_size + offset); each request then reads its own history
through its block table. Prefill, chunked prefill and decode tokens share one
flat batch: the per-request queries are padded to ``[num_reqs, max_q]`` and
attend with a causal mask offset by what the request had already computed.
That costs O(num_reqs x max_q x max_kv) memory; a CUDA kernel (FlashAttention
varlen / paged decode) slots into ``paged_attention`` with the same metadata.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN's SDPA builds an execution graph per new shape (2.7 ms of host time per
# call on an H200, measured by benchmarks/profile_step.py); a paged step's KV
# length changes every decode step, so its cache never hits. The memory-efficient
# kernel takes an arbitrary mask with no per-shape build; math is the fallback.
_MASKED_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def bucket_blocks(blocks: int) -> int:
    """Round a block count up to a power of two, so gathered KV shapes repeat across steps."""
    return 1 << max(0, blocks - 1).bit_length()


@dataclass
class AttentionMetadata:
    """Per-step layout of the flat token batch, shared by every layer of the step.

    ``use_cache=False`` (profiling, dummy batches) runs plain causal attention
    over the batch as one sequence and touches no cache.
    """

    slot_mapping: torch.Tensor     # [num_tokens] int64
    block_table: torch.Tensor      # [num_reqs, max_blocks] int64
    seq_lens: torch.Tensor         # [num_reqs] tokens in cache after this step
    query_lens: torch.Tensor       # [num_reqs] tokens run this step
    token_req: torch.Tensor        # [num_tokens] which request each token belongs to
    token_q: torch.Tensor          # [num_tokens] its index among the request's queries
    max_query_len: int
    max_seq_len: int
    use_cache: bool = True
    query_start_loc: torch.Tensor | None = None  # [num_reqs + 1] int64
    is_decode: bool = False                      # host-known: every request runs one token


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Scatters k, v ([T, Hkv, D]) into their slots of the paged cache."""
    _, num_blocks, block_size, h, d = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, h, d)
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float) -> torch.Tensor:
    """q [T, Hq, D] against each request's cached K/V -> [T, Hq, D]."""
    num_reqs = meta.seq_lens.shape[0]
    _, _, block_size, hkv, d = kv_cache.shape
    blocks = min(bucket_blocks(-(-meta.max_seq_len // block_size)), meta.block_table.shape[1])
    max_kv = blocks * block_size  # padded slots are masked out below
    table = meta.block_table[:, :blocks]                          # [R, nb]
    k = kv_cache[0][table].view(num_reqs, max_kv, hkv, d)
    v = kv_cache[1][table].view(num_reqs, max_kv, hkv, d)
    # Pad queries per request: [R, max_q, Hq, D].
    qp = q.new_zeros(num_reqs, meta.max_query_len, q.shape[1], d)
    qp[meta.token_req, meta.token_q] = q
    # Query i of request r sits at position seq_len - q_len + i; it sees keys j <= that.
    # Padded query rows see the whole (non-empty) sequence, so no row is fully masked.
    q_pos = (meta.seq_lens - meta.query_lens).unsqueeze(1) + torch.arange(
        meta.max_query_len, device=q.device)                      # [R, max_q]
    kv_pos = torch.arange(max_kv, device=q.device)                # [max_kv]
    mask = (kv_pos[None, None, :] <= q_pos[:, :, None]) & (
        kv_pos[None, None, :] < meta.seq_lens[:, None, None])     # [R, max_q, max_kv]
    # GQA without copying K/V: each KV head's query group is folded into the query
    # axis, [R, max_q, Hkv * g, D] -> [R, Hkv, g * max_q, D]; the mask is repeated per
    # group member. Query head h uses KV head h // g, as in HF.
    g, max_q = q.shape[1] // hkv, meta.max_query_len
    qf = qp.view(num_reqs, max_q, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(
        num_reqs, hkv, g * max_q, d)
    mf = mask[:, None].expand(num_reqs, g, max_q, max_kv).reshape(num_reqs, 1, g * max_q, max_kv)
    with sdpa_kernel(_MASKED_BACKENDS) if q.is_cuda else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(qf, k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mf, scale=scale)  # [R, Hkv, g*max_q, D]
    out = out.view(num_reqs, hkv, g, max_q, d).permute(0, 3, 1, 2, 4)    # [R, max_q, Hkv, g, D]
    out = out.reshape(num_reqs, max_q, hkv * g, d)
    return out[meta.token_req, meta.token_q]                      # [T, Hq, D]


class PagedAttention(nn.Module):
    """Attention of one layer; the runner binds its cache tensor to ``kv_cache``."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5
        self.kv_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        # q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq * D]
        if not meta.use_cache or self.kv_cache is None:
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                is_causal=True, scale=self.scale, enable_gqa=True).transpose(0, 1)
        else:
            write_kv(self.kv_cache, k, v, meta.slot_mapping)
            out = paged_attention(q, self.kv_cache, meta, self.scale)
        return out.reshape(q.shape[0], -1)
