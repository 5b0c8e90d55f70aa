"""Qwen2 (Llama + q/k/v bias) and Qwen3 (Llama + per-head RMSNorm on q and k).

Qwen2's bias comes from ``HFModelConfig.attention_bias`` (hf_config sets it
for Qwen2); Qwen3 normalises each query and key head before RoPE, which
keeps attention logits bounded without the bias.
"""

from __future__ import annotations

import torch

from actorexec.actors.model.hf_config import HFModelConfig
from actorexec.actors.model.layers.norm import RMSNorm
from actorexec.actors.model.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)
from actorexec.actors.model.parallel import ParallelContext


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Same graph as Llama; the qkv bias is switched on by the config."""


class Qwen3Attention(LlamaAttention):
    def __init__(self, cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__(cfg, parallel, dtype)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)  # over head_dim, per head


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_cls = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3Model
