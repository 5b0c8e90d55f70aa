"""TP all-reduce through torch's symmetric memory (NVLink loads), for decode-sized messages.

Why: a decode step all-reduces ``[batch, hidden]`` twice per layer (8 KB to 512 KB
in bf16 for an 8B model at batch 1 to 64). NCCL's latency at these sizes is
its protocol overhead, not bandwidth: inside a CUDA graph on two H200s its
all-reduce of ``[64, 4096]`` takes 24-28 us, torch's one-shot kernel 10 us
without a staging copy, and the fused kernel here (all-reduce + residual add +
RMSNorm, ``symm_all_reduce_kernels.py``) 7 us, replacing the norm kernel too
(``benchmarks/collective_baseline.py``, ``parallel_throughput.py --profile-steps``).
It is the default wherever every TP rank is a GPU of one host that reaches the
others by peer access (:func:`choose`; ``ACTOREXEC_TP_ALL_REDUCE=nccl`` turns it
off); messages larger than the buffer (a long prefill) go to NCCL.

NVLink multicast stays off: only plain peer loads and stores (torch's
``one_shot_all_reduce`` and our kernel), never the multimem operations; the
device scripts set ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` / ``NCCL_NVLS_ENABLE=0``.

A row-parallel layer's GEMM writes its partial sum straight into a symmetric
buffer rendezvoused once over the TP group (:meth:`SymmMemAllReduce.partial`);
the norm after it sums the parts (:meth:`SymmMemAllReduce.reduce_add_norm`).
Other tensors (the embedding's) are copied in first (:meth:`SymmMemAllReduce.__call__`).
Every kernel here can be captured in CUDA graphs.
"""

from __future__ import annotations

import os
import socket
import warnings
import zlib
from typing import Any

import torch

ENV = "ACTOREXEC_TP_ALL_REDUCE"  # "auto" (default), "nccl" or "symm_mem": see choose()
# The largest message taken by default (bytes): an 8B model's [128, 4096] bf16 activations.
DEFAULT_MAX_BYTES = 1 << 20
# Never more than this (one-shot loads every peer's whole message: past a few MB a
# ring or two-shot algorithm moves less data).
MAX_BYTES_CAP = 8 << 20


def buffer_bytes(max_rows: int, hidden_size: int, dtype: torch.dtype) -> int:
    """Symmetric buffer size for ``[max_rows, hidden]`` messages (a decode step's)."""
    return min(MAX_BYTES_CAP, max(DEFAULT_MAX_BYTES, max_rows * hidden_size * dtype.itemsize))


def choose(group: Any, device: torch.device) -> bool:
    """Whether this TP group uses the symmetric-memory path (collective over ``group``).

    ``ACTOREXEC_TP_ALL_REDUCE``: ``nccl``, ``symm_mem``, or ``auto`` (the default):
    symmetric memory when every rank of the group is a CUDA device on this host that
    reaches every other by peer access (NVLink or PCIe P2P) and Triton imports; NCCL
    otherwise (TP across hosts, say). Every rank takes the same decision.
    """
    import torch.distributed as dist

    choice = os.environ.get(ENV, "auto")
    if choice not in ("auto", "nccl", "symm_mem"):
        raise ValueError(f"{ENV}={choice!r}: choose 'auto', 'nccl' or 'symm_mem'")
    if device.type != "cuda" or choice == "nccl":
        return False
    if choice == "symm_mem":
        return True
    world = dist.get_world_size(group)
    host = zlib.crc32(socket.gethostname().encode()) & 0x7FFFFFFF
    mine = torch.tensor([host, device.index or 0], dtype=torch.int64, device=device)
    everyone = torch.empty(world, 2, dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(everyone, mine, group=group)
    rows = everyone.tolist()
    try:
        import triton  # noqa: F401  (the fused kernel's compiler)
        ok = all(h == host for h, _ in rows) and all(
            d == device.index or torch.cuda.can_device_access_peer(device.index or 0, d)
            for _, d in rows)
    except ImportError:
        ok = False
    verdict = torch.tensor([int(ok)], dtype=torch.int64, device=device)
    dist.all_reduce(verdict, op=dist.ReduceOp.MIN, group=group)
    return bool(verdict.item())


class SymmMemAllReduce:
    """Sums over ``group`` of tensors up to ``max_bytes`` of ``dtype``: in place
    (:meth:`__call__`), of a row-parallel GEMM (:meth:`linear`), or of a GEMM's partial
    sums left in the buffer (:meth:`partial`) fused with the residual add and RMSNorm
    that follow (:meth:`reduce_add_norm`, one Triton kernel).

    The symmetric buffer has three regions of ``max_bytes``: two for partial sums, used
    alternately (each :meth:`partial` takes the other one), and one for
    :meth:`__call__`'s copies. The fused kernel has no barrier after its loads, so a
    rank may write a region again only once every peer has finished reading it: a
    region is written again two :meth:`partial` calls later, after the call in between
    passed its barrier, which a peer reaches only after its previous kernel (the one
    that read the region) completed. Every partial sum must therefore be summed
    (:meth:`reduce_add_norm` or :meth:`sum_partial`) before the next :meth:`partial`,
    and every rank must take regions in the same order: :meth:`begin_forward` resets
    the order at each forward (a forward makes an even number of calls, two per
    layer, so a CUDA graph captured at any time starts at region 0).
    """

    # Programs (rows in flight) of the fused kernel: one barrier flag each per peer.
    SLOTS = 128

    def __init__(self, group: Any, dtype: torch.dtype, device: torch.device,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        import torch.distributed as dist
        from torch.distributed import _symmetric_memory as symm_mem

        self.dtype = dtype
        self.region = max_bytes // dtype.itemsize    # elements per region
        self.buffer = symm_mem.empty(3 * self.region, dtype=dtype, device=device)
        with warnings.catch_warnings():  # needed before torch 2.8, a deprecated no-op after
            warnings.simplefilter("ignore", FutureWarning)
            enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
            if enable is not None:
                enable(group.group_name)
        handle = symm_mem.rendezvous(self.buffer, group)  # collective over the TP group
        self.group_name = group.group_name
        self.rank, self.world = handle.rank, handle.world_size
        self.flags = symm_mem.empty(self.SLOTS * self.world, dtype=torch.int32, device=device)
        self.flags.zero_()
        flags = symm_mem.rendezvous(self.flags, group)
        self.buffer_ptrs = torch.tensor(handle.buffer_ptrs, dtype=torch.int64, device=device)
        self.flag_ptrs = torch.tensor(flags.buffer_ptrs, dtype=torch.int64, device=device)
        self._next = 0  # the region the next partial() writes (0 or 1)
        torch.cuda.synchronize(device)
        dist.barrier(group)  # every rank's flags are zero before anyone signals

    def begin_forward(self) -> None:
        """A model forward starts: partial sums start again at region 0 on every rank."""
        self._next = 0

    def partial(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """This rank's ``x @ weight.T`` written into the next partial-sum region (the view
        is returned), to be summed before the next call; None if it does not fit."""
        rows, cols = x.shape[0], weight.shape[0]   # x: [T, in_per_rank], weight: [out, in]
        if x.dim() != 2 or x.dtype != self.dtype or rows * cols > self.region:
            return None
        start = self._next * self.region
        self._next ^= 1
        staged = self.buffer[start:start + rows * cols].view(rows, cols)
        torch.mm(x, weight.t(), out=staged)
        return staged

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """``sum over ranks of x @ weight.T``; None (nothing done) if it does not fit."""
        staged = self.partial(x, weight)
        return None if staged is None else self.sum_partial(staged)

    def sum_partial(self, staged: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a :meth:`partial` result, into a new tensor (never in
        place: the buffer is what the peers read). torch's one-shot kernel."""
        out = torch.empty_like(staged)
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, out)
        return out

    def _offset(self, x: torch.Tensor) -> int | None:
        """Element offset of ``x`` in the buffer if it starts a partial-sum region."""
        if x.dim() != 2 or x.dtype != self.dtype or not x.is_contiguous():
            return None
        delta = x.data_ptr() - self.buffer.data_ptr()
        return {0: 0, self.region * x.element_size(): self.region}.get(delta)

    def holds(self, x: torch.Tensor) -> bool:
        """``x`` is a :meth:`partial` result (whose peers' parts lie at the same place)."""
        return self._offset(x) is not None

    def reduce_add_norm(self, partial: torch.Tensor, residual: torch.Tensor,
                        weight: torch.Tensor, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``s = sum over ranks of partial``; returns ``(rms_norm(s + residual) * weight,
        s + residual)``, rounded as the unfused ops round. None if ``partial`` is not a
        :meth:`partial` result, ``residual`` is not a plain ``[T, hidden]`` tensor, or the
        group size is not a power of two (the kernel's rank vector)."""
        offset = self._offset(partial)
        if offset is None or self.world & (self.world - 1) or residual.shape != partial.shape \
                or weight.dtype != self.dtype or not residual.is_contiguous() \
                or residual.dtype != self.dtype:
            return None
        from .symm_all_reduce_kernels import all_reduce_add_rms_norm_kernel

        rows, cols = partial.shape
        out = torch.empty_like(residual)
        res_out = torch.empty_like(residual)
        if rows:
            programs = min(rows, self.SLOTS)
            block = 1 << (cols - 1).bit_length()
            all_reduce_add_rms_norm_kernel[(programs,)](
                self.buffer_ptrs, offset, self.flag_ptrs, residual, weight, out, res_out, rows,
                cols, eps, programs, RANK=self.rank, WORLD=self.world, BLOCK=block,
                num_warps=min(16, max(1, block // 256)))
        return out, res_out

    def __call__(self, x: torch.Tensor) -> bool:
        """Sums ``x`` over the group in place; False (nothing done) if it does not fit.
        Through the third region, with torch's one-shot kernel (barriers on both sides)."""
        n = x.numel()
        if x.dtype != self.dtype or n > self.region or not x.is_contiguous() \
                or self.holds(x):  # a partial sum: reduce_add_norm or sum_partial
            return False
        staged = self.buffer[2 * self.region:2 * self.region + n]
        staged.copy_(x.view(-1))
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, x.view(-1))
        return True
