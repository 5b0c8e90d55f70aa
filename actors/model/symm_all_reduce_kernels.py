"""Triton kernel: a one-shot all-reduce fused with the residual add and RMSNorm after it.

A TP decode step ends every attention and MLP block with ``all-reduce ->
(x + residual) -> RMSNorm``: two kernels (NCCL or torch's one-shot, then our
``rms_norm``) and a launch gap between them, 64 times a step for an 8B model.
Here one program per row (rows past the grid loop) waits until every rank has
written its partial sum into its symmetric buffer, loads the row from every
rank's buffer over NVLink, sums in float32, rounds to the model dtype (what
NCCL's bf16 sum gives), adds the residual, and writes the new residual and the
normed row.

One barrier, before the loads: per program, on symmetric int32 flags
``[SLOTS, world]``. Thread r of program p sets flag ``[p, me]`` on rank r
(compare-and-swap 0 -> 1, release, system scope; it spins while that peer has
not yet taken the previous signal) and waits for flag ``[p, r]`` on this rank
(CAS 1 -> 0, acquire, system scope), which also resets it: the flags are zero
again after every call, so the kernel replays from CUDA graphs any number of
times. The standard symmetric-memory barrier (torch's ``sync_remote_blocks``),
in PTX. No barrier after the loads: the caller alternates between two halves
of the buffer, so a half is written again only after the next call's barrier,
which every peer reaches only once it has finished reading (see
``SymmMemAllReduce``). NVLink multicast is never used.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _thread_id():
    return tl.inline_asm_elementwise("mov.u32 $0, %tid.x;", "=r", [], dtype=tl.int32,
                                     is_pure=True, pack=1)


def _cas_until_swapped(label: str, sem: str, expected: int, new: int) -> str:
    """PTX: compare-and-swap ``*$1`` from ``expected`` to ``new`` at system scope with
    ``sem`` ordering, retried until it swaps."""
    return f"""
        {{
        .reg .u32 %old;
        .reg .pred %done;
        {label}:
        atom.global.{sem}.sys.cas.b32 %old, [$1], {expected}, {new};
        setp.eq.u32 %done, %old, {expected};
        @!%done bra {label};
        mov.u32 $0, %old;
        }}
        """


# Set *addr from 0 to 1 once it is 0 again (the peer took the previous signal).
_SIGNAL = tl.constexpr(_cas_until_swapped("retry_signal", "release", 0, 1))
# Wait until *addr is 1, and take it (back to 0).
_WAIT = tl.constexpr(_cas_until_swapped("retry_wait", "acquire", 1, 0))


@triton.jit
def _signal(addrs):
    tl.inline_asm_elementwise(_SIGNAL, "=r, l", [addrs], dtype=tl.int32, is_pure=False,
                              pack=1)


@triton.jit
def _wait(addrs):
    tl.inline_asm_elementwise(_WAIT, "=r, l", [addrs], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _barrier(flag_ptrs, slot, RANK: tl.constexpr, WORLD: tl.constexpr):
    """Programs with this ``slot`` on every rank meet; memory before is visible after."""
    tl.debug_barrier()  # this program's earlier loads and stores are done
    ranks = tl.arange(0, WORLD)
    bases = tl.load(flag_ptrs.to(tl.pointer_type(tl.uint64)) + ranks)  # each rank's flags
    send = bases.to(tl.pointer_type(tl.int32)) + slot * WORLD + RANK
    mine = tl.load(flag_ptrs.to(tl.pointer_type(tl.uint64)) + RANK).to(tl.pointer_type(tl.int32))
    wait = mine + slot * WORLD + ranks
    # A [WORLD] tensor is spread over threads 0..WORLD-1 (element r on thread r), so these
    # threads each signal and await one rank; the others skip.
    if _thread_id() < WORLD:
        _signal(send)
        _wait(wait)
    tl.debug_barrier()  # the rest of the program sees what the waits acquired


@triton.jit
def all_reduce_add_rms_norm_kernel(buffer_ptrs, offset, flag_ptrs, res_ptr, w_ptr, out_ptr,
                                   res_out_ptr, rows, cols, eps, programs,
                                   RANK: tl.constexpr, WORLD: tl.constexpr,
                                   BLOCK: tl.constexpr):
    # buffer_ptrs: [WORLD] addresses of each rank's buffer; this call's partial sums start
    # ``offset`` elements in, [rows, cols]. flag_ptrs: [WORLD] addresses of the flags.
    pid = tl.program_id(0)
    _barrier(flag_ptrs, pid, RANK, WORLD)           # every rank's partial sums are written
    dtype = out_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    bases = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    for row in range(pid, rows, programs):
        start = row.to(tl.int64) * cols
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for r in tl.static_range(WORLD):
            part = tl.load(bases + r).to(tl.pointer_type(dtype)) + offset
            # .cv: read the peer's memory itself, never a stale cached line
            acc += tl.load(part + start + offs, mask=mask, other=0.0,
                           cache_modifier=".cv").to(tl.float32)
        summed = acc.to(dtype)                      # what an all-reduce in dtype returns
        res = tl.load(res_ptr + start + offs, mask=mask, other=0.0)
        x = (summed.to(tl.float32) + res.to(tl.float32)).to(dtype)
        tl.store(res_out_ptr + start + offs, x, mask=mask)
        x32 = x.to(tl.float32)
        var = tl.sum(x32 * x32, axis=0) / cols
        normed = (x32 * tl.rsqrt(var + eps)).to(dtype)
        tl.store(out_ptr + start + offs, (normed.to(tl.float32) * w).to(dtype), mask=mask)
