"""Which model class builds which ``architectures`` entry of config.json."""

from __future__ import annotations

from actorexec.actors.model.hf_config import SUPPORTED_ARCHITECTURES, HFModelConfig
from actorexec.actors.model.llama import LlamaForCausalLM
from actorexec.actors.model.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM
from actorexec.protocol.errors import ConfigError

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
}


def model_class(cfg: HFModelConfig) -> type[LlamaForCausalLM]:
    family = SUPPORTED_ARCHITECTURES.get(cfg.architecture)
    if family is None:
        raise ConfigError(f"unsupported model architecture {cfg.architecture!r}; "
                          f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    return MODEL_CLASSES[family]
