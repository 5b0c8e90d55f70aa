"""The default model: a tiny Llama made deterministically on first use, no download.

Written in HF format (``config.json`` + ``model.safetensors``) with torch and
safetensors only, plus our byte tokenizer, into
``~/.cache/actorexec/default-model-v1`` (``$ACTOREXEC_CACHE`` overrides the
root). Its weights were trained for a few CPU minutes on the plain-text
software licenses of a Debian system (``examples/train_default_model.py``) and
ship with the package; it babbles license-like English, nothing more. Where
the shipped file is missing, seeded random weights are written instead and
the text is NOT meaningful. Either way the demo and tests run anywhere, offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .tokenizer import ByteTokenizer

VERSION = "v1"
# Trained weights shipped with the package (see examples/train_default_model.py);
# when absent, random seeded weights are written instead.
DATA_DIR = Path(__file__).parent / "default_model_data"
SEED = 1234
# Byte tokenizer: 3 specials + 256 bytes = 259, padded to a multiple of 16 so
# vocab-parallel embeddings split evenly across TP ranks.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 272,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float32",
    "attention_bias": False,
}


def default_model_dir() -> Path:
    root = os.environ.get("ACTOREXEC_CACHE") or Path.home() / ".cache" / "actorexec"
    kind = "trained" if (DATA_DIR / "model.safetensors").is_file() else "random"
    return Path(root) / f"default-model-{VERSION}-{kind}"


def _weights() -> dict[str, object]:
    import torch

    c = CONFIG
    gen = torch.Generator().manual_seed(SEED)
    h, inter, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nh, nkv, vocab = c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]

    def rand(*shape: int) -> torch.Tensor:
        # std 1/sqrt(fan_in) keeps activations O(1) so logits have a clear argmax.
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    w: dict[str, object] = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=gen)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(nh * hd, h)
        w[p + "self_attn.k_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, nh * hd)
        w[p + "mlp.gate_proj.weight"] = rand(inter, h)
        w[p + "mlp.up_proj.weight"] = rand(inter, h)
        w[p + "mlp.down_proj.weight"] = rand(h, inter)
        w[p + "input_layernorm.weight"] = torch.ones(h)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h)
    w["model.norm.weight"] = torch.ones(h)
    w["lm_head.weight"] = rand(vocab, h) * 4.0
    return w


def write_default_model(directory: Path | str) -> Path:
    """Writes the default model into ``directory`` (created; contents replaced)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2))
    shipped = DATA_DIR / "model.safetensors"
    if shipped.is_file():
        shutil.copyfile(shipped, directory / "model.safetensors")
    else:
        save_file(_weights(), str(directory / "model.safetensors"), metadata={"format": "pt"})
    ByteTokenizer().save(directory)
    return directory


def ensure_default_model(directory: Path | str | None = None) -> Path:
    """The default model's directory, made first if missing (atomically)."""
    target = Path(directory) if directory is not None else default_model_dir()
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".default-model-", dir=target.parent))
    try:
        write_default_model(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():   # not a racing writer: real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
