"""The Triton paged-attention kernels, in one import (needs ``triton``; CUDA or interpreter)."""

from actorexec.actors.model.layers.triton_decode_attention import (
    decode_attention_triton,
    default_num_partitions,
)
from actorexec.actors.model.layers.triton_kv_write import write_kv_triton
from actorexec.actors.model.layers.triton_prefill_attention import prefill_attention_triton

__all__ = ["decode_attention_triton", "default_num_partitions", "prefill_attention_triton",
           "write_kv_triton"]
