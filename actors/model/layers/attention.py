"""Paged attention over a block-table KV cache: Triton kernels on CUDA, pure torch on CPU.

Every layer owns one cache tensor ``[2, num_blocks, block_size, num_kv_heads,
head_dim]`` (K and V). New K/V are written through ``slot_mapping`` (slot =
block_id * block_size + offset; negative = padding row, skipped); each request
then reads its own history through its block table. Prefill, chunked prefill
and decode tokens share one flat batch described by ``query_start_loc``.

On CUDA the kernels read K/V in place (``triton_decode_attention`` when the
caller says every request has one query, ``triton_prefill_attention``
otherwise) without a host synchronisation, so a decode step can be captured
in a CUDA graph. Elsewhere (and on CUDA without Triton) the reference below
gathers each request's blocks and runs SDPA with a causal mask; it costs
O(num_reqs x max_q x max_kv) memory and is what the kernels are tested against.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import InitVar, dataclass
from types import ModuleType

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

    Tensors live on the model's device and may be views of the runner's persistent
    buffers; the int/bool fields are host-known (no kernel reads them back).
    ``R`` is the number of request rows (graph padding rows included), ``T`` the
    number of tokens. ``use_cache=False`` (profiling, dummy batches) runs plain
    causal attention over the batch as one sequence and touches no cache.

    ``query_lens`` / ``token_req`` / ``token_q`` are accepted for callers that still
    pass them: ``query_start_loc`` is derived (on the device) from ``query_lens``
    when not given; the other two are ignored.
    """

    slot_mapping: torch.Tensor           # [T] int64: cache slot per token; < 0 = don't write
    block_table: torch.Tensor            # [R, max_blocks] int32/int64 physical block ids
    seq_lens: torch.Tensor               # [R] int32/int64: tokens cached after this step; 0 = pad
    query_start_loc: torch.Tensor | None = None  # [R + 1] int32/int64: row r's tokens start here
    max_query_len: int = 1               # longest query of the step
    max_seq_len: int | None = None       # longest seq_len; sizes the reference's gather (CPU)
    is_decode: bool = False              # every row has exactly one query token (T == R)
    num_partitions: int | None = None    # decode split-KV partitions; None = device default
    use_cache: bool = True
    query_lens: InitVar[torch.Tensor | None] = None   # [R]; transitional, see above
    token_req: InitVar[torch.Tensor | None] = None
    token_q: InitVar[torch.Tensor | None] = None

    def __post_init__(self, query_lens: torch.Tensor | None, token_req: torch.Tensor | None,
                      token_q: torch.Tensor | None) -> None:
        if self.query_start_loc is None:
            if query_lens is None:
                raise ValueError("AttentionMetadata needs query_start_loc (or query_lens)")
            qsl = torch.zeros(query_lens.shape[0] + 1, dtype=torch.int64,
                              device=query_lens.device)
            torch.cumsum(query_lens, 0, out=qsl[1:])
            self.query_start_loc = qsl


@functools.cache
def _triton_kernels() -> ModuleType | None:
    """The kernel package, or None where Triton is missing (then CUDA uses the reference)."""
    try:
        from actorexec.actors.model.layers import triton_attention
    except ImportError:
        return None
    return triton_attention


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Scatters k, v ([T, Hkv, D]) into their slots of the paged cache; slot < 0 is skipped."""
    kernels = _triton_kernels() if k.is_cuda else None
    if kernels is not None:
        kernels.write_kv_triton(kv_cache, k, v, slot_mapping)
    else:
        reference_write_kv(kv_cache, k, v, slot_mapping)


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float) -> torch.Tensor:
    """q [T, Hq, D] against each request's cached K/V (this step's included) -> [T, Hq, D]."""
    kernels = _triton_kernels() if q.is_cuda else None
    if kernels is None:
        return reference_paged_attention(q, kv_cache, meta, scale)
    if meta.is_decode:
        return kernels.decode_attention_triton(q, kv_cache, meta.block_table, meta.seq_lens,
                                               scale, meta.num_partitions)
    assert meta.query_start_loc is not None  # set by __post_init__
    return kernels.prefill_attention_triton(q, kv_cache, meta.block_table, meta.seq_lens,
                                            meta.query_start_loc, scale)


def reference_write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """The torch path of ``write_kv`` (boolean indexing: synchronises on CUDA)."""
    _, num_blocks, block_size, h, d = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, h, d)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    flat[0].index_copy_(0, slots, k[keep].to(kv_cache.dtype))
    flat[1].index_copy_(0, slots, v[keep].to(kv_cache.dtype))


def reference_paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                              scale: float) -> torch.Tensor:
    """Gather each request's blocks, pad queries per request, SDPA with a causal mask.

    Reads ``query_start_loc`` and ``seq_lens`` back to the host (fine on the CPU).
    Rows of padding tokens (past ``query_start_loc[R]``) and of requests with
    ``seq_len == 0`` come out as zeros.
    """
    assert meta.query_start_loc is not None  # set by __post_init__
    num_reqs = meta.seq_lens.shape[0]
    _, _, block_size, hkv, d = kv_cache.shape
    qsl = meta.query_start_loc.long()
    query_lens = qsl[1:] - qsl[:-1]                               # [R]
    num_real = int(qsl[-1])
    token_req = torch.repeat_interleave(torch.arange(num_reqs, device=q.device), query_lens)
    token_q = torch.arange(num_real, device=q.device) - qsl[:-1][token_req]
    seq_lens = meta.seq_lens.long()
    max_seq_len = meta.max_seq_len if meta.max_seq_len is not None else int(seq_lens.max())
    blocks = min(bucket_blocks(-(-max_seq_len // block_size)), meta.block_table.shape[1])
    max_kv = blocks * block_size  # padded slots are masked out below
    table = meta.block_table[:, :blocks].long()                   # [R, nb]
    k = kv_cache[0][table].view(num_reqs, max_kv, hkv, d)
    v = kv_cache[1][table].view(num_reqs, max_kv, hkv, d)
    # Pad queries per request: [R, max_q, Hq, D].
    max_q = max(1, meta.max_query_len)
    qp = q.new_zeros(num_reqs, max_q, q.shape[1], d)
    qp[token_req, token_q] = q[:num_real]
    # Query i of request r sits at position seq_len - q_len + i; it sees keys j <= that.
    # Padded query rows see the whole (non-empty) sequence, so no row is fully masked.
    q_pos = (seq_lens - query_lens).unsqueeze(1) + torch.arange(max_q, device=q.device)
    kv_pos = torch.arange(max_kv, device=q.device)                # [max_kv]
    mask = (kv_pos[None, None, :] <= q_pos[:, :, None]) & (
        kv_pos[None, None, :] < seq_lens[:, None, None])          # [R, max_q, max_kv]
    # GQA without copying K/V: each KV head's query group is folded into the query
    # axis, [R, max_q, Hkv * g, D] -> [R, Hkv, g * max_q, D]; the mask is repeated per
    # group member. Query head h uses KV head h // g, as in HF.
    g = q.shape[1] // hkv
    qf = qp.view(num_reqs, max_q, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(
        num_reqs, hkv, g * max_q, d)
    mf = mask[:, None].expand(num_reqs, g, max_q, max_kv).reshape(num_reqs, 1, g * max_q, max_kv)
    with sdpa_kernel(_MASKED_BACKENDS) if q.is_cuda else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(qf, k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mf, scale=scale)  # [R, Hkv, g*max_q, D]
    out = out.view(num_reqs, hkv, g, max_q, d).permute(0, 3, 1, 2, 4)    # [R, max_q, Hkv, g, D]
    out = out.reshape(num_reqs, max_q, hkv * g, d)[token_req, token_q]  # [T_real, Hq, D]
    empty = (seq_lens == 0)[token_req][:, None, None]             # fully masked rows: NaN
    result = q.new_zeros(q.shape)
    result[:num_real] = torch.where(empty, 0.0, out)
    return result


class PagedAttention(nn.Module):
    """Attention of one layer; the runner binds its cache tensor to ``kv_cache``."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5
        self.kv_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata, kv_written: bool = False) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq * D]. ``kv_written``: the caller already
        put this step's k/v into the cache (fused with RoPE on the GPU)."""
        if not meta.use_cache or self.kv_cache is None:
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                is_causal=True, scale=self.scale, enable_gqa=True).transpose(0, 1)
        else:
            if not kv_written:
                write_kv(self.kv_cache, k, v, meta.slot_mapping)
            out = paged_attention(q, self.kv_cache, meta, self.scale)
        return out.reshape(q.shape[0], -1)
