"""Decode paged-attention kernel time against the bytes it must read (GPU only).

Llama-3.1-8B attention shapes (32 query heads, 8 KV heads, head 128, bf16,
block size 16), batch 1/64/256 x context 128/2048. Each request's blocks are
shuffled over the cache, as a running engine leaves them. The kernel runs for
several "layers" (separate caches, so one layer's K/V is not still in L2 for
the next) inside one CUDA graph, so launch overhead is out of the figure.
Baseline in the same run: device-to-device copy bandwidth (read + write of 1
GiB), the floor for reading the K/V once. Optionally also the torch reference
path (gather + SDPA, eager) that CPU and the old GPU path use.

    python benchmarks/attention_kernels.py --out results/attention_kernels.json
    python benchmarks/attention_kernels.py --partitions auto,1,8,32   # sweep the split
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from actorexec.actors.model.layers import triton_decode_attention as decode
from actorexec.actors.model.layers.attention import AttentionMetadata, reference_paged_attention
from actorexec.actors.model.layers.triton_attention import (
    decode_attention_triton,
    default_num_partitions,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
LAYER_BUDGET_BYTES = 24e9   # K/V of all simulated layers together


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (counted as read + write)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    end.synchronize()
    return 2 * x.numel() * 10 / (start.elapsed_time(end) / 1e3)


def make_inputs(batch: int, context: int, layers: int, gen: torch.Generator):
    blocks_per_req = -(-context // BLOCK_SIZE)
    num_blocks = batch * blocks_per_req + 16
    table = torch.randperm(num_blocks, generator=gen)[:batch * blocks_per_req]
    table = table.view(batch, blocks_per_req).to(torch.int32).cuda()
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    caches = [torch.randn(2, num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device="cuda",
                          dtype=DTYPE) for _ in range(layers)]
    q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    return q, caches, table, seq_lens


def time_graph(fn, reps: int = 20) -> float:
    """Seconds per replay of a CUDA graph of ``fn``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()                                  # compile / autotune outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def time_eager(fn, reps: int = 5) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def bench_shape(batch: int, context: int, partition_specs: list[str], bandwidth: float,
                gen: torch.Generator, with_reference: bool) -> list[dict]:
    """One row per partition count for one (batch, context)."""
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * DTYPE.itemsize
    layers = max(1, min(32, int(LAYER_BUDGET_BYTES // kv_bytes)))
    q, caches, table, seq_lens = make_inputs(batch, context, layers, gen)
    scale = HEAD_DIM ** -0.5
    ref_us = None
    if with_reference:
        meta = AttentionMetadata(
            slot_mapping=torch.zeros(batch, dtype=torch.int64, device="cuda"),
            block_table=table, seq_lens=seq_lens,
            query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
            max_query_len=1, max_seq_len=context, is_decode=True)
        ref_us = 1e6 * time_eager(lambda: reference_paged_attention(q, caches[0], meta, scale))
    rows = []
    for spec in partition_specs:
        parts = default_num_partitions(batch, KV_HEADS, q.device) if spec == "auto" else int(spec)

        def step(parts: int = parts) -> None:
            for cache in caches:
                decode_attention_triton(q, cache, table, seq_lens, scale, parts)

        per_layer = time_graph(step) / layers
        floor = kv_bytes / bandwidth
        rows.append({"batch": batch, "context": context, "partitions": parts,
                     "layers_timed": layers, "us_per_layer": per_layer * 1e6,
                     "kv_bytes": kv_bytes, "achieved_tb_s": kv_bytes / per_layer / 1e12,
                     "fraction_of_copy_bw": floor / per_layer, "floor_us": floor * 1e6,
                     "reference_us": ref_us})
    return rows


def print_row(row: dict) -> None:
    ref = row["reference_us"]
    print(f"{row['batch']:5d} {row['context']:5d} {row['tile']:4d} {row['partitions']:5d} "
          f"{row['us_per_layer']:9.1f} {row['kv_bytes'] / 1e6:8.2f} "
          f"{row['achieved_tb_s']:6.2f} {100 * row['fraction_of_copy_bw']:5.0f}% "
          f"{row['floor_us']:8.1f} {f'{ref:8.1f}' if ref is not None else '-':>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/attention_kernels.json")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--contexts", default="128,2048")
    parser.add_argument("--partitions", default="auto",
                        help="comma list of split-KV partition counts; 'auto' = the default")
    parser.add_argument("--tiles", default=str(decode.DECODE_TILE),
                        help="comma list of tokens per K/V tile to try (a module constant)")
    parser.add_argument("--no-reference", action="store_true", help="skip the torch path")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_kernels.py needs a CUDA GPU")

    bandwidth = copy_bandwidth()
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print(f"{'batch':>5} {'ctx':>5} {'tile':>4} {'parts':>5} {'us/layer':>9} {'KV MB':>8} "
          f"{'TB/s':>6} {'% copy':>6} {'floor us':>8} {'ref us':>8}")
    for batch in (int(b) for b in args.batches.split(",")):
        for context in (int(c) for c in args.contexts.split(",")):
            for tile in (int(t) for t in args.tiles.split(",")):
                decode.DECODE_TILE = tile  # read by the launcher at each call
                for row in bench_shape(batch, context, args.partitions.split(","), bandwidth,
                                       gen, not args.no_reference):
                    rows.append({**row, "tile": tile})
                    print_row(rows[-1])
            torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(), "host": platform.node(),
              "torch": torch.__version__, "copy_bandwidth_bytes_s": bandwidth,
              "shapes": {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
                         "block_size": BLOCK_SIZE, "dtype": str(DTYPE)},
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
