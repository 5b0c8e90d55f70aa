"""Raw torch.distributed latency between 2 ranks, as the baseline for TP/PP costs.

Times, for a decode step's activation ``[tokens, hidden]``: one all-reduce (TP
does two per layer) and one send/recv pair (PP sends two per step). 2 spawned
processes, one GPU each with NCCL (gloo on the CPU); median over ``iters``.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, port: int, device: str, shape: tuple[int, int], iters: int,
          results: dict) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                            rank=rank)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(shape, device=dev, dtype=dtype)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize(dev)

    def timed(op) -> float:
        for _ in range(10):  # warm-up: communicator set-up stays out of the numbers
            op()
        sync()
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            op()
            sync()
            samples.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(samples)

    def p2p() -> None:
        (dist.send if rank == 0 else dist.recv)(x, 1 - rank)

    out = {"all_reduce_us": timed(lambda: dist.all_reduce(x)), "send_recv_us": timed(p2p)}
    if rank == 0:
        results.update(out)
    dist.barrier()
    dist.destroy_process_group()


def measure(device: str, shape: tuple[int, int], iters: int = 200) -> dict[str, float]:
    """Median µs of one all-reduce and one send/recv of a ``shape`` tensor between 2 ranks."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    port = 29500 + os.getpid() % 1000
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(port, device, shape, iters, results), nprocs=2,
                           start_method="spawn")
        return dict(results)
