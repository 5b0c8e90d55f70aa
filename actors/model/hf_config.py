"""Reads an HF ``config.json`` into one frozen, architecture-neutral description.

Both the engine (max_model_len, EOS ids) and the model code read the same
fields, so the differences between transformers versions (``rope_parameters``
in v5, ``rope_theta`` + ``rope_scaling`` before) are handled once, here, as
is the one rule for ``max_model_len`` (``resolve_max_model_len``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actorexec.protocol.errors import ConfigError

# config.json "architectures" entry -> our model family (see registry.py).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass(frozen=True)
class HFModelConfig:
    """The model shape and tokens an HF checkpoint declares, in one place.

    Frozen so model code and the engine can share it without copies.
    ``rope_scaling`` is ``None`` or the dict of a Llama-3 style scaling.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str
    attention_bias: bool = False
    # Tokens a sliding-window layer attends to; None when every layer attends to all.
    sliding_window: int | None = None

    @property
    def family(self) -> str:
        """``"llama"``, ``"qwen2"`` or ``"qwen3"``: which model class builds it."""
        return SUPPORTED_ARCHITECTURES[self.architecture]


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = raw.get("rope_parameters")
    if isinstance(params, dict):  # transformers >= 5
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise ConfigError(f"rope scaling type {kind!r} is not supported (only 'llama3')")
    return theta, {**scaling, "rope_type": "llama3"}


def _eos(raw: dict[str, Any], path: Path) -> tuple[int, ...]:
    """Every eos id of config.json and generation_config.json, merged (as transformers and
    vLLM stop on both: Qwen2.5-Instruct and Qwen3 list 151645 in one, [151645, 151643]
    in the other)."""
    found: list[Any] = [raw.get("eos_token_id")]
    gen = path / "generation_config.json"
    if gen.is_file():
        found.append(json.loads(gen.read_text()).get("eos_token_id"))
    ids: dict[int, None] = {}  # ordered set: config.json's first
    for eos in found:
        if eos is not None:
            for e in eos if isinstance(eos, list) else [eos]:
                ids[int(e)] = None
    return tuple(ids)


def _sliding_window(raw: dict[str, Any], family: str, architecture: str) -> int | None:
    """The window of the layers that slide, as transformers decides it; None if none do."""
    window = raw.get("sliding_window")
    layer_types = raw.get("layer_types")
    if isinstance(layer_types, list):  # transformers >= 4.53 writes the decision down
        slides = "sliding_attention" in layer_types
    elif family in ("qwen2", "qwen3"):
        slides = bool(raw.get("use_sliding_window")) and int(
            raw.get("max_window_layers", 0)) < int(raw["num_hidden_layers"])
    else:
        slides = architecture == "MistralForCausalLM"  # Llama ignores the field
    if not slides or window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"sliding_window={window!r} in config.json is not a positive integer")
    return window


def resolve_max_model_len(hf: HFModelConfig, max_model_len: int | None) -> int:
    """The longest sequence the engine and every runner allow: ``max_model_len`` if set,
    else the checkpoint's ``max_position_embeddings``.

    Sliding-window attention is not implemented: within the window it equals
    full attention, so such a model runs only while sequences fit the window
    (``ConfigError`` otherwise, never silently wrong outputs).
    """
    length = max_model_len or hf.max_position_embeddings
    window = hf.sliding_window
    if window is not None and length > window:
        raise ConfigError(
            f"{hf.architecture} uses sliding-window attention (window {window} tokens), which "
            f"actorexec does not implement; a max_model_len of {length} would let sequences "
            f"outgrow the window and give wrong outputs. Set ModelConfig(max_model_len={window}) "
            "or less: within the window sliding attention equals full attention.")
    return length


def read_hf_config(path: str | Path) -> HFModelConfig:
    """Parses ``<path>/config.json``; raises ConfigError naming what is wrong."""
    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        raise ConfigError(f"no config.json in model directory {str(path)!r}")
    raw = json.loads(file.read_text())
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ConfigError(f"unsupported model architecture {archs!r} in {str(file)!r}; "
                          f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    num_heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    theta, scaling = _rope(raw)
    family = SUPPORTED_ARCHITECTURES[arch]
    return HFModelConfig(
        architecture=arch,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or hidden // num_heads),
        intermediate_size=int(raw["intermediate_size"]),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos(raw, path),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        # Qwen2 always has q/k/v bias; Llama may declare attention_bias.
        attention_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
        sliding_window=_sliding_window(raw, family, arch),
    )
