"""TP all-reduce through torch's symmetric memory (one-shot, NVLink loads), for small messages.

Why: a decode step all-reduces ``[batch, hidden]`` twice per layer (8 KB to 512 KB
in bf16 for an 8B model at batch 1 to 64). NCCL's latency at these sizes is
its protocol overhead, not bandwidth; a one-shot kernel reads every peer's
buffer directly over NVLink. Whether it is faster here is measured by
``benchmarks/collective_baseline.py`` (both, same run); it is used only when
``ACTOREXEC_TP_ALL_REDUCE=symm_mem``.

NVLink multicast stays off: only ``one_shot_all_reduce`` (plain peer loads) is
used, never the multimem operations, and the device scripts set
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` / ``NCCL_NVLS_ENABLE=0``.

The input is copied into a symmetric buffer rendezvoused once over the TP
group (its size bounds the messages taken; larger ones go to NCCL), and the sum
is written back in place. Both kernels can be captured in CUDA graphs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

ENV = "ACTOREXEC_TP_ALL_REDUCE"  # "nccl" (default) or "symm_mem"
# The largest message taken (bytes): a decode step's [max_num_seqs, hidden] activations.
DEFAULT_MAX_BYTES = 1 << 20


def wanted() -> bool:
    choice = os.environ.get(ENV, "nccl")
    if choice not in ("nccl", "symm_mem"):
        raise ValueError(f"{ENV}={choice!r}: choose 'nccl' or 'symm_mem'")
    return choice == "symm_mem"


class SymmMemAllReduce:
    """In-place sum over ``group`` of tensors up to ``max_bytes`` of ``dtype``."""

    def __init__(self, group: Any, dtype: torch.dtype, device: torch.device,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        from torch.distributed import _symmetric_memory as symm_mem

        self.dtype = dtype
        self.buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
        with warnings.catch_warnings():  # needed before torch 2.8, a deprecated no-op after
            warnings.simplefilter("ignore", FutureWarning)
            enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
            if enable is not None:
                enable(group.group_name)
        symm_mem.rendezvous(self.buffer, group)  # collective over the TP group
        self.group_name = group.group_name

    def __call__(self, x: torch.Tensor) -> bool:
        """Sums ``x`` over the group in place; False (nothing done) if it does not fit."""
        n = x.numel()
        if x.dtype != self.dtype or n > self.buffer.numel() or not x.is_contiguous():
            return False
        staged = self.buffer[:n]
        staged.copy_(x.view(-1))
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, x.view(-1))
        return True
