"""Raw torch.distributed latency between 2 ranks, as the baseline for TP/PP costs.

For a decode step's activation ``[tokens, hidden]`` at each size asked for, times:
  * ``all_reduce_us``: one NCCL all-reduce (TP does two per layer);
  * ``symm_mem_all_reduce_us``: the same sum with torch's symmetric-memory one-shot
    all-reduce (NVLink peer loads; multicast stays off), CUDA only;
  * ``send_recv_us``: one batched send/recv of the (hidden, residual) pair, as a
    PP stage hands its activations on.
2 spawned processes, one GPU each with NCCL (gloo on the CPU). Each figure is the
mean of ``iters`` back-to-back operations timed together (launch included, one
sync at the end), the median of 5 such runs. On CUDA the all-reduces are also
timed as a decode step runs them, captured in one CUDA graph of ``iters``
operations and replayed (``*_graph_us``: no launch cost, only the kernels and
their synchronisation); ``symm_mem_gemm_graph_us`` is the symmetric-memory
path without its staging copy (a GEMM's output written into the buffer).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _timed(op: Callable[[], None], sync: Callable[[], None], iters: int) -> float:
    for _ in range(10):  # warm-up: communicator set-up stays out of the numbers
        op()
    sync()
    runs = []
    for _ in range(5):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            op()
        sync()
        runs.append((time.perf_counter() - t0) / iters * 1e6)
    return statistics.median(runs)


def _graphed(op: Callable[[], None], sync: Callable[[], None], iters: int) -> float:
    """Mean µs of ``op`` replayed from a CUDA graph of ``iters`` calls (median of 5)."""
    for _ in range(3):
        op()
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            op()
    return _timed(graph.replay, sync, 1) / iters


def _symm_mem_op(x: torch.Tensor, copy: bool = True) -> Callable[[], None]:
    from torch.distributed import _symmetric_memory as symm_mem

    group = dist.group.WORLD
    buffer = symm_mem.empty(x.numel(), dtype=x.dtype, device=x.device)
    enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
    if enable is not None:
        enable(group.group_name)
    symm_mem.rendezvous(buffer, group)
    flat = x.view(-1)

    def op() -> None:
        if copy:  # the GEMM path writes into ``buffer`` itself: nothing to copy
            buffer.copy_(flat)
        torch.ops.symm_mem.one_shot_all_reduce_out(buffer, "sum", group.group_name, flat)

    return op


def _all_reduce_op(x: torch.Tensor) -> Callable[[], None]:
    return lambda: dist.all_reduce(x)


def _p2p_op(pair: tuple[torch.Tensor, torch.Tensor], rank: int) -> Callable[[], None]:
    """Rank 0 sends the pair to rank 1 in one batched call, as StageLink does."""
    op = dist.isend if rank == 0 else dist.irecv

    def p2p() -> None:
        for work in dist.batch_isend_irecv([dist.P2POp(op, t, 1 - rank) for t in pair]):
            work.wait()

    return p2p


def _rank(rank: int, port: int, device: str, shapes: list[tuple[int, int]], iters: int,
          results: dict) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                            rank=rank)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize(dev)

    out: dict[str, dict[str, float | str]] = {}
    for shape in shapes:
        x = torch.randn(shape, device=dev, dtype=dtype)
        pair = (torch.randn(shape, device=dev, dtype=dtype), torch.randn(shape, device=dev,
                                                                          dtype=dtype))
        row: dict[str, float | str] = {
            "all_reduce_us": _timed(_all_reduce_op(x), sync, iters),
            "send_recv_us": _timed(_p2p_op(pair, rank), sync, iters)}
        if device == "cuda":
            row["all_reduce_graph_us"] = _graphed(_all_reduce_op(x), sync, iters)
            try:
                row["symm_mem_all_reduce_us"] = _timed(_symm_mem_op(x), sync, iters)
                row["symm_mem_graph_us"] = _graphed(_symm_mem_op(x), sync, iters)
                row["symm_mem_gemm_graph_us"] = _graphed(_symm_mem_op(x, copy=False), sync,
                                                         iters)
            except Exception as exc:  # an older torch, no P2P: say why, keep the rest
                row["symm_mem_all_reduce_us"] = f"unavailable: {type(exc).__name__}: {exc}"
        out[f"{shape[0]}x{shape[1]}"] = row
    if rank == 0:
        results.update(out)
    dist.barrier()
    dist.destroy_process_group()


def measure(device: str, shapes: list[tuple[int, int]], iters: int = 200
            ) -> dict[str, dict[str, float | str]]:
    """Per shape ``"TxH"``: mean µs of each operation between 2 ranks (see module docs)."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    port = 29500 + os.getpid() % 1000
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(port, device, shapes, iters, results), nprocs=2,
                           start_method="spawn")
        return dict(results)
