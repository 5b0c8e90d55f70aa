"""Compiles every Triton kernel of the GPU path for sm_90 (H100/H200) without a GPU.

The interpreter does not type-check like the compiler does (globals, dot
shapes, integer promotion), so this catches what only a GPU run would. Run as
a script in a process where TRITON_INTERPRET is unset; prints one line per kernel.
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from actorexec.actors.model import symm_all_reduce_kernels as symm
from actorexec.actors.model.layers import triton_decode_attention as decode
from actorexec.actors.model.layers import triton_kv_write as kv_write
from actorexec.actors.model.layers import triton_prefill_attention as prefill
from actorexec.actors.model_runner import triton_seeded_noise as noise

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn: triton.JITFunction, pointers: dict[str, str], constexprs: dict,
                   floats: tuple[str, ...] = ("qk_scale",), **options: int) -> None:
    """Other (non-pointer, non-constexpr) arguments are int32 scalars."""
    signature = {name: "constexpr" if name in constexprs else pointers.get(
        name, "fp32" if name in floats else "i32") for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=TARGET, options=options)
    print(f"{fn.__name__} {constexprs}: {len(kernel.asm['cubin'])} bytes of cubin")


def main() -> None:
    for dtype in ("bf16", "fp16"):
        io = {"q_ptr": f"*{dtype}", "k_cache_ptr": f"*{dtype}", "v_cache_ptr": f"*{dtype}",
              "out_ptr": f"*{dtype}", "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
              "block_table_ptr": "*i32", "seq_lens_ptr": "*i32", "query_start_ptr": "*i32"}
        for group, head_dim in ((1, 128), (4, 64), (8, 128), (7, 64)):
            d_pad = triton.next_power_of_2(head_dim)
            for single in (True, False):
                compile_kernel(decode._decode_partition_kernel, io, dict(
                    GROUP=group, G_PAD=max(16, triton.next_power_of_2(group)),
                    HEAD_DIM=head_dim, D_PAD=d_pad, BLOCK_SIZE=16, TILE=decode.DECODE_TILE,
                    SINGLE=single, IEEE_DOT=False), num_warps=4, num_stages=2)
            g_pad = triton.next_power_of_2(group)
            block_q = max(1, prefill.PREFILL_ROWS // g_pad)
            compile_kernel(prefill._prefill_kernel, io, dict(
                GROUP=group, G_PAD=g_pad, HEAD_DIM=head_dim, D_PAD=d_pad, BLOCK_SIZE=16,
                BLOCK_Q=block_q, BLOCK_M=block_q * g_pad, TILE=prefill.PREFILL_TILE,
                IEEE_DOT=False), num_warps=4, num_stages=2)
        compile_kernel(decode._decode_reduce_kernel, io, dict(
            HEAD_DIM=128, D_PAD=128, P_PAD=64, TILE=decode.DECODE_TILE), num_warps=4)
        compile_kernel(symm.all_reduce_add_rms_norm_kernel, {
            "buffer_ptrs": "*i64", "flag_ptrs": "*i64", "res_ptr": f"*{dtype}",
            "w_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "res_out_ptr": f"*{dtype}"},
            dict(RANK=1, WORLD=2, BLOCK=4096), floats=("eps",), num_warps=16)
        compile_kernel(kv_write._write_kv_kernel, {
            "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "k_cache_ptr": f"*{dtype}",
            "v_cache_ptr": f"*{dtype}", "slot_ptr": "*i64"}, dict(
            NUM_KV_HEADS=8, HEAD_DIM=128, H_PAD=8, D_PAD=128, BLOCK_SIZE=16), num_warps=4)
    compile_kernel(noise._seeded_noise_kernel, {
        "noise_ptr": "*fp32", "seeds_ptr": "*i64", "seeded_ptr": "*i1",
        "positions_ptr": "*i64"}, dict(BLOCK=noise.NOISE_BLOCK), num_warps=4)


if __name__ == "__main__":
    main()
