"""The symmetric-memory TP all-reduce paths against NCCL + rms_norm, on 2 GPUs.

Each rank computes row-parallel GEMMs' partial sums, then:
  * ``linear``: the summed GEMM (torch's one-shot kernel) must equal NCCL's sum;
  * ``reduce_add_norm``: the fused Triton kernel must equal NCCL's sum followed by
    the fused residual-add RMSNorm, bit for bit (same roundings);
eagerly, and replayed many times from CUDA graphs of different row counts, each
holding two reduce-add-norms as a layer does (the barrier flags must reset after
every call; the two buffer regions alternate), with more rows than the kernel
has programs (its row loop).
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

pytestmark = pytest.mark.gpu

HIDDEN, K = 4096, 1024


def _rank(rank: int, store: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from actorexec.actors.model.layers.fused_ops import rms_norm
    from actorexec.actors.model.symm_all_reduce import SymmMemAllReduce

    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=2)
    group = dist.group.WORLD
    dtype = torch.bfloat16
    fast = SymmMemAllReduce(group, dtype, dev, max_bytes=300 * HIDDEN * 2)
    gen = torch.Generator(device=dev).manual_seed(1234 + rank)
    norm_w = torch.randn(HIDDEN, device=dev, dtype=dtype,
                         generator=torch.Generator(device=dev).manual_seed(7))
    eps = 1e-5

    def inputs(rows: int) -> list[torch.Tensor]:
        """x1, w1, x2, w2 (this rank's), residual (the same on every rank)."""
        xs = [torch.randn(rows, K, device=dev, dtype=dtype, generator=gen),
              torch.randn(HIDDEN, K, device=dev, dtype=dtype, generator=gen) / 32,
              torch.randn(rows, K, device=dev, dtype=dtype, generator=gen),
              torch.randn(HIDDEN, K, device=dev, dtype=dtype, generator=gen) / 32]
        shared = torch.Generator(device=dev).manual_seed(rows + len(graphs))
        return [*xs, torch.randn(rows, HIDDEN, device=dev, dtype=dtype, generator=shared)]

    def layer(x1, w1, x2, w2, res):
        """Two fused reduce-add-norms, as one decoder layer makes."""
        fast.begin_forward()
        h, res = fast.reduce_add_norm(fast.partial(x1, w1), res, norm_w, eps)
        return fast.reduce_add_norm(fast.partial(x2, w2), res + h, norm_w, eps)

    def reference(x1, w1, x2, w2, res):
        outs = []
        for x, w in ((x1, w1), (x2, w2)):
            y = F.linear(x, w)
            dist.all_reduce(y, group=group)
            outs.append(y)
        h, res = rms_norm(outs[0], norm_w, eps, res)
        return rms_norm(outs[1], norm_w, eps, res + h)

    graphs: dict[int, tuple] = {}
    for rows in (1, 3, 64, 200):   # 200 > SLOTS: programs loop over rows
        x1, w1, x2, w2, res = inputs(rows)
        y = F.linear(x1, w1)
        dist.all_reduce(y, group=group)
        assert torch.equal(fast.linear(x1, w1), y), rows
        got, want = layer(x1, w1, x2, w2, res), reference(x1, w1, x2, w2, res)
        assert torch.equal(got[1], want[1]), rows
        assert torch.equal(got[0], want[0]), rows

    for rows in (1, 64):
        static = inputs(rows)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(*static)  # warm-up (Triton compiles outside the capture)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(*static)
        graphs[rows] = (graph, static, out)
    for i in range(40):
        rows = (1, 64, 64)[i % 3]   # a graph after itself, and after the other one
        graph, static, out = graphs[rows]
        for dst, src in zip(static, inputs(rows), strict=True):
            dst.copy_(src)
        graph.replay()
        want = reference(*static)
        assert torch.equal(out[1], want[1]), (i, rows)
        assert torch.equal(out[0], want[0]), (i, rows)
    torch.cuda.synchronize()
    dist.barrier()
    dist.destroy_process_group()


def test_symmetric_memory_paths_equal_nccl_and_rms_norm():
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_rank, args=(os.path.join(tmp, "store"),), nprocs=2,
                                    join=True)
