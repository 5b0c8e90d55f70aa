"""Tiny random HF-format checkpoints made offline with transformers (test reference only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHITECTURES = ("llama", "qwen2", "qwen3")

# Small enough for a 2-core CI with 4 gloo ranks, big enough to exercise GQA,
# TP head splits (4 query heads, 2 KV heads) and PP layer splits (4 layers).
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)


def make_tiny_checkpoint(directory: Path | str, arch: str = "llama", seed: int = 0,
                         max_shard_size: str | None = None, **overrides: Any) -> Path:
    """Writes a random ``arch`` model (config.json + safetensors) to ``directory``.

    ``max_shard_size`` (e.g. ``"20KB"``) splits the weights into several
    shards with an index, as large checkpoints are.
    """
    import torch
    import transformers

    directory = Path(directory)
    params = {**TINY, **overrides}
    if arch == "llama":
        config = transformers.LlamaConfig(**params)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**params)
        model_cls = transformers.Qwen2ForCausalLM
    elif arch == "qwen3":
        params.setdefault("head_dim", params["hidden_size"] // params["num_attention_heads"])
        config = transformers.Qwen3Config(**params)
        model_cls = transformers.Qwen3ForCausalLM
    else:
        raise ValueError(f"unknown test architecture {arch!r}; choose from {ARCHITECTURES}")
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    # Random init has tiny weights that make every logit nearly equal, so greedy
    # ties would flip on rounding; widen the spread so argmax is well defined.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    kwargs = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(directory, **kwargs)
    return directory


def load_reference(directory: Path | str) -> Any:
    """The transformers model for a checkpoint, float32, eval mode."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, torch_dtype=torch.float32).eval()
