"""The default model: a tiny Llama made deterministically on first use, no download.

Written in HF format (``config.json`` + ``model.safetensors``) with torch
only (no numpy), plus our byte tokenizer and a ``tokenizer_config.json`` with a
simple chat template, into ``~/.cache/actorexec/default-model-v2-*``
(``$ACTOREXEC_CACHE`` overrides the root). Its weights were trained for a few
CPU minutes on the plain-text software licenses of a Debian system
(``examples/train_default_model.py``) and ship with the package; it babbles
license-like English, nothing more. Where the shipped file is missing, seeded
random weights are written instead and the text is NOT meaningful. Either
way the demo and tests run anywhere, offline.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from .tokenizer import TOKENIZER_CONFIG_FILE, ByteTokenizer

# v2: tokenizer_config.json (chat template) added; a new directory, so old caches stay valid.
VERSION = "v2"
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
# "Role: content" lines, then "Assistant:": enough for chat requests to work out of the box
# (the model was trained on licenses, not dialogues; its replies are babble).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def default_model_dir() -> Path:
    root = os.environ.get("ACTOREXEC_CACHE") or Path.home() / ".cache" / "actorexec"
    kind = "trained" if (DATA_DIR / "model.safetensors").is_file() else "random"
    return Path(root) / f"default-model-{VERSION}-{kind}"


def _weights() -> dict[str, Any]:
    import torch

    c = CONFIG
    gen = torch.Generator().manual_seed(SEED)
    h, inter, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nh, nkv, vocab = c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]

    def rand(*shape: int) -> torch.Tensor:
        # std 1/sqrt(fan_in) keeps activations O(1) so logits have a clear argmax.
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    w: dict[str, Any] = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=gen)}
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


SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def save_safetensors(tensors: dict[str, Any], path: Path) -> None:
    """Writes CPU tensors in the safetensors format without numpy.

    ``safetensors.torch.save_file`` goes through numpy, which the demo's
    environment does not have. The format is simple: an 8-byte little-endian
    header length, a JSON header (dtype, shape, byte range per tensor), the bytes.
    """
    if sys.byteorder != "little":
        raise RuntimeError("save_safetensors writes host byte order, which must be little-endian")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")],
                        "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        blobs.append(ctypes.string_at(t.data_ptr(), nbytes))   # host byte order: little-endian
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)          # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)


def write_default_model(directory: Path | str) -> Path:
    """Writes the default model into ``directory`` (created; contents replaced)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2))
    shipped = DATA_DIR / "model.safetensors"
    if shipped.is_file():
        shutil.copyfile(shipped, directory / "model.safetensors")
    else:
        save_safetensors(_weights(), directory / "model.safetensors")
    tokenizer = ByteTokenizer()
    tokenizer.save(directory)
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(
        {**tokenizer.special_tokens, "chat_template": CHAT_TEMPLATE}, indent=2))
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
