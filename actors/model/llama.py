"""Llama (2/3, Mistral-style): pre-norm decoder, GQA with RoPE, SwiGLU MLP.

Reads like the paper: x -> RMSNorm -> attention -> + residual -> RMSNorm ->
SwiGLU -> + residual. Tensor parallelism lives only in the projections
(column-parallel in, row-parallel out: one all-reduce after attention, one
after the MLP); pipeline parallelism only in which layers this rank builds
(``parallel.layer_range``) and whether it embeds / norms and projects to logits.
Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm) reuse this in qwen.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from actorexec.actors.model.hf_config import HFModelConfig
from actorexec.actors.model.layers.attention import AttentionMetadata, PagedAttention
from actorexec.actors.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from actorexec.actors.model.layers.fused_ops import (
    rope_and_write_kv_,
    silu_and_mul,
    use_triton,
)
from actorexec.actors.model.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from actorexec.actors.model.layers.norm import RMSNorm
from actorexec.actors.model.layers.rotary import RotaryEmbedding
from actorexec.actors.model.parallel import ParallelContext


@dataclass
class IntermediateTensors:
    """What one pipeline stage hands the next: the residual stream, split as vLLM does.

    ``hidden`` is the sending TP rank's partial sum of its last layer's output; the
    same TP rank of the next stage receives it, and that stage's first norm sums the
    parts over its TP group (one all-reduce per boundary, where it is needed anyway).
    """

    hidden: torch.Tensor    # [num_tokens, hidden], this TP rank's part
    residual: torch.Tensor  # [num_tokens, hidden]


class LlamaAttention(nn.Module):
    """GQA self-attention: this rank's query heads and its (maybe replicated) KV heads."""

    def __init__(self, cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        d = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, d, cfg.num_heads, cfg.num_kv_heads,
                                          cfg.attention_bias, parallel, dtype)
        self.o_proj = RowParallelLinear(cfg.num_heads * d, cfg.hidden_size, False, parallel, dtype)
        self.rotary_emb = RotaryEmbedding(d, cfg.max_position_embeddings, cfg.rope_theta,
                                          cfg.rope_scaling)
        self.attn = PagedAttention(self.qkv_proj.heads_per_rank, self.qkv_proj.kv_per_rank, d)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k  # Qwen3 normalises each head here

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata, reduce: bool = True) -> torch.Tensor:
        """[T, hidden] -> [T, hidden], summed over TP ranks or (``reduce=False``) not."""
        q, k, v = self.qkv_proj.split(self.qkv_proj(x))  # [T, Hq, D], [T, Hkv, D] x2
        q, k = self.qk_norm(q, k)
        cache = self.attn.kv_cache
        if cache is not None and meta.use_cache and use_triton(q):
            # GPU: RoPE and the K/V cache write in one kernel (two fewer launches a layer).
            rope_and_write_kv_(q, k, v, self.rotary_emb.table(q.device), positions, cache,
                               meta.slot_mapping)
            return self.o_proj(self.attn(q, k, v, meta, kv_written=True), reduce)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, meta), reduce)


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused in one column-parallel matmul."""

    def __init__(self, cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        i = cfg.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [i, i], False,
                                                       parallel, dtype)
        self.down_proj = RowParallelLinear(i, cfg.hidden_size, False, parallel, dtype)

    def forward(self, x: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        # [T, hidden] -> [T, 2I/tp] -> [T, I/tp] -> [T, hidden] (summed over TP if reduce)
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)), reduce)


class LlamaDecoderLayer(nn.Module):
    attention_cls: type[LlamaAttention] = LlamaAttention

    def __init__(self, cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        self.parallel = parallel
        self.self_attn = self.attention_cls(cfg, parallel, dtype)
        self.mlp = LlamaMLP(cfg, parallel, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) -> (this rank's partial MLP output, residual), both [T, hidden].

        ``x`` is the embedding (``residual`` None: the first layer of the model) or the
        previous layer's partial output, not yet summed over TP ranks: each all-reduce
        happens in the norm after it (ParallelContext.reduce_add_norm), one fused
        kernel on GPUs with the symmetric-memory path.
        """
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.parallel.reduce_add_norm(x, residual, self.input_layernorm)
        h = self.self_attn(positions, x, meta, reduce=False)
        x, residual = self.parallel.reduce_add_norm(h, residual, self.post_attention_layernorm)
        return self.mlp(x, reduce=False), residual


class LlamaModel(nn.Module):
    """The decoder stack of this pipeline stage: layers ``parallel.layer_range`` only."""

    layer_cls: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        self.parallel = parallel
        start, end = parallel.layer_range
        if parallel.is_first_stage:
            self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size,
                                                       parallel, dtype)
        # Keyed by absolute index, so parameter names match the checkpoint's.
        self.layers = nn.ModuleDict({str(i): self.layer_cls(cfg, parallel, dtype)
                                     for i in range(start, end)})
        if parallel.is_last_stage:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                meta: AttentionMetadata, intermediate: IntermediateTensors | None = None
                ) -> torch.Tensor | IntermediateTensors:
        self.parallel.begin_forward()
        if self.parallel.is_first_stage:
            assert input_ids is not None
            x, residual = self.embed_tokens(input_ids), None  # [T, hidden]
        else:
            assert intermediate is not None
            x, residual = intermediate.hidden, intermediate.residual
        for layer in self.layers.values():
            x, residual = layer(positions, x, residual, meta)
        if not self.parallel.is_last_stage:  # partial sums: the next stage sums them
            return IntermediateTensors(self.parallel.owned(x), residual)
        x, _ = self.parallel.reduce_add_norm(x, residual, self.norm)
        return x  # [T, hidden]


class LlamaForCausalLM(nn.Module):
    """Decoder + LM head (tied to the embedding when the config says so)."""

    model_cls: type[LlamaModel] = LlamaModel
    # (our fused parameter, checkpoint name, shard id): how HF's separate
    # projections load into the fused ones.
    stacked_params = (("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"),
                      ("qkv_proj", "v_proj", "v"), ("gate_up_proj", "gate_proj", 0),
                      ("gate_up_proj", "up_proj", 1))

    def __init__(self, cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        self.config, self.parallel = cfg, parallel
        self.model = self.model_cls(cfg, parallel, dtype)
        if parallel.is_last_stage:
            self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, parallel, dtype)
            if cfg.tie_word_embeddings and parallel.is_first_stage:
                self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                meta: AttentionMetadata, intermediate: IntermediateTensors | None = None
                ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, meta, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[num_reqs, hidden] -> [num_reqs, vocab] float32 (gathered over TP)."""
        return self.lm_head.compute_logits(hidden).float()

    def attention_layers(self) -> dict[str, PagedAttention]:
        """This rank's attention modules keyed by checkpoint-style layer name."""
        return {f"model.layers.{i}.self_attn": layer.self_attn.attn
                for i, layer in self.model.layers.items()}
