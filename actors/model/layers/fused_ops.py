"""Fused element-wise kernels for the GPU decode path: one launch where eager torch takes 4-10.

Why: at batch 1 an 8B decode step is ~970 eager kernels, and even inside a
CUDA graph each launch costs ~2-3 µs of GPU time, so kernel count, not bytes,
is what separates a plain CUDA graph (6.6 ms) from the 3.75 ms memory floor.
RMSNorm (+ residual add), RoPE and SiLU·mul are each one Triton kernel here.

Every op has a pure-torch path with the same rounding points (HF's: norm in
float32, cast to the model dtype before the weight multiply); the Triton path
runs on CUDA tensors when triton imports, the torch path everywhere else (CPU
CI). ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors for tests.
"""

from __future__ import annotations

import os

import torch

try:  # triton ships with CUDA torch builds; the CPU wheel has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None
    tl = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """Triton for CUDA tensors (or any tensor under the interpreter, for tests)."""
    return triton is not None and (x.is_cuda or _INTERPRET)


# ---------------------------------------------------------------- RMSNorm (+ residual)
def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HF semantics: (x + residual) in the model dtype, norm in float32, cast, times weight."""
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    out = weight * normed
    return out if residual is None else (out, x)


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, x_stride,
                         res_stride, out_stride, eps, HAS_RESIDUAL: tl.constexpr,
                         BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
            tl.store(res_out_ptr + row * out_stride + cols, x, mask=mask)
        x32 = x.to(tl.float32)
        var = tl.sum(x32 * x32, axis=0) / n_cols
        normed = (x32 * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        out = (normed.to(tl.float32) * w.to(tl.float32)).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + row * out_stride + cols, out, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """norm(x) or (norm(x + residual), x + residual) over the last dim; one kernel on GPU."""
    if not use_triton(x) or x.dtype != weight.dtype:
        return rms_norm_ref(x, weight, eps, residual)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows, cols = x2.shape
    out = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    res2 = residual.reshape(-1, cols) if residual is not None else x2
    if res2.stride(-1) != 1:
        res2 = res2.contiguous()
    if rows:
        block = triton.next_power_of_2(cols)
        _rms_norm_kernel[(rows,)](x2, res2, weight, out, res_out, cols, x2.stride(0),
                                  res2.stride(0), out.stride(0), eps,
                                  HAS_RESIDUAL=residual is not None, BLOCK=block,
                                  num_warps=min(16, max(1, block // 256)))
    if residual is None:
        return out.view(shape)
    return out.view(shape), res_out.view(shape)


# ------------------------------------------------------------------------ RoPE (neox)
def rope_ref(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor,
             positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D]; cos_sin [max_pos, D] = cos | sin halves (float32)."""
    cos, sin = cos_sin[positions].unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2] each

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


if triton is not None:

    @triton.jit
    def _rope_kernel(x_ptr, pos_ptr, cs_ptr, token_stride, head_stride, num_heads,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        # One program per token: rotates every head of q or k in place.
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        d = tl.arange(0, HALF)
        cos = tl.load(cs_ptr + pos * (2 * HALF) + d)
        sin = tl.load(cs_ptr + pos * (2 * HALF) + HALF + d)
        h = tl.arange(0, BLOCK_H)
        mask = (h < num_heads)[:, None]
        base = x_ptr + t * token_stride + h[:, None] * head_stride + d[None, :]
        x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
        o1 = x1 * cos[None, :] - x2 * sin[None, :]
        o2 = x2 * cos[None, :] + x1 * sin[None, :]
        tl.store(base, o1.to(x_ptr.dtype.element_ty), mask=mask)
        tl.store(base + HALF, o2.to(x_ptr.dtype.element_ty), mask=mask)


def rope_(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor,
          positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q and k by their tokens' positions; in place (views of the QKV output) on GPU."""
    if not use_triton(q):
        return rope_ref(q, k, cos_sin, positions)
    tokens, _, dim = q.shape
    if tokens:
        for x in (q, k):
            assert x.stride(-1) == 1, "rope_ needs the head dim contiguous"
            _rope_kernel[(tokens,)](x, positions, cos_sin, x.stride(0), x.stride(1),
                                    x.shape[1], HALF=dim // 2,
                                    BLOCK_H=triton.next_power_of_2(x.shape[1]), num_warps=4)
    return q, k


if triton is not None:

    @triton.jit
    def _rope_write_kv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, cs_ptr, slot_ptr, kc_ptr, vc_ptr,
                              q_st, q_sh, k_st, k_sh, v_st, v_sh, c_sb, c_ss, c_sh,
                              num_q, num_kv, block_size, HALF: tl.constexpr,
                              BLOCK_Q: tl.constexpr, BLOCK_KV: tl.constexpr):
        # One program per token: rotate its q heads and k heads in place, then copy the
        # rotated k and its v into the token's cache slot (slot < 0: graph padding, skip).
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        d = tl.arange(0, HALF)
        cos = tl.load(cs_ptr + pos * (2 * HALF) + d)[None, :]
        sin = tl.load(cs_ptr + pos * (2 * HALF) + HALF + d)[None, :]
        hq = tl.arange(0, BLOCK_Q)
        mq = (hq < num_q)[:, None]
        qb = q_ptr + t * q_st + hq[:, None] * q_sh + d[None, :]
        q1 = tl.load(qb, mask=mq, other=0.0).to(tl.float32)
        q2 = tl.load(qb + HALF, mask=mq, other=0.0).to(tl.float32)
        tl.store(qb, (q1 * cos - q2 * sin).to(q_ptr.dtype.element_ty), mask=mq)
        tl.store(qb + HALF, (q2 * cos + q1 * sin).to(q_ptr.dtype.element_ty), mask=mq)
        hk = tl.arange(0, BLOCK_KV)
        mk = (hk < num_kv)[:, None]
        kb = k_ptr + t * k_st + hk[:, None] * k_sh + d[None, :]
        k1 = tl.load(kb, mask=mk, other=0.0).to(tl.float32)
        k2 = tl.load(kb + HALF, mask=mk, other=0.0).to(tl.float32)
        r1 = (k1 * cos - k2 * sin).to(k_ptr.dtype.element_ty)
        r2 = (k2 * cos + k1 * sin).to(k_ptr.dtype.element_ty)
        tl.store(kb, r1, mask=mk)
        tl.store(kb + HALF, r2, mask=mk)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            dst = (slot // block_size) * c_sb + (slot % block_size) * c_ss \
                + hk[:, None] * c_sh + d[None, :]
            tl.store(kc_ptr + dst, r1.to(kc_ptr.dtype.element_ty), mask=mk)
            tl.store(kc_ptr + dst + HALF, r2.to(kc_ptr.dtype.element_ty), mask=mk)
            vb = v_ptr + t * v_st + hk[:, None] * v_sh + d[None, :]
            tl.store(vc_ptr + dst, tl.load(vb, mask=mk, other=0.0).to(vc_ptr.dtype.element_ty),
                     mask=mk)
            tl.store(vc_ptr + dst + HALF, tl.load(vb + HALF, mask=mk, other=0.0).to(
                vc_ptr.dtype.element_ty), mask=mk)


def rope_and_write_kv_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       cos_sin: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """RoPE on q [T, Hq, D] and k [T, Hkv, D] in place, and k, v into their cache slots
    (``kv_cache`` [2, num_blocks, block_size, Hkv, D]): one launch instead of three.
    Triton only (callers use ``rope_`` and ``write_kv`` where ``use_triton`` is False)."""
    tokens, num_q, dim = q.shape
    num_kv = k.shape[1]
    if not tokens:
        return
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "head dims must be contiguous"
    kc, vc = kv_cache[0], kv_cache[1]
    assert kc.stride(-1) == 1
    _rope_write_kv_kernel[(tokens,)](
        q, k, v, positions, cos_sin, slot_mapping, kc, vc, q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), kc.stride(0), kc.stride(1),
        kc.stride(2), num_q, num_kv, kc.shape[1], HALF=dim // 2,
        BLOCK_Q=triton.next_power_of_2(num_q), BLOCK_KV=triton.next_power_of_2(num_kv),
        num_warps=4)


# ----------------------------------------------------------------------------- SwiGLU
def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> silu(gate) * up, [T, I], as HF computes it in the model dtype."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, inter, x_stride, out_stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        g = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * x_stride + inter + cols, mask=mask, other=0.0)
        act = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty)
        out = act.to(tl.float32) * u.to(tl.float32)
        tl.store(out_ptr + row * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if not use_triton(gate_up):
        return silu_and_mul_ref(gate_up)
    tokens, width = gate_up.shape
    inter = width // 2
    out = torch.empty(tokens, inter, dtype=gate_up.dtype, device=gate_up.device)
    if tokens:
        block = 1024
        _silu_mul_kernel[(tokens, triton.cdiv(inter, block))](
            gate_up, out, inter, gate_up.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out
