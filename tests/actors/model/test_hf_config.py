"""What a checkpoint's config files mean: merged eos ids, and sliding windows refused
unless max_model_len keeps every sequence inside the window."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from actorexec.actors.model.hf_config import read_hf_config, resolve_max_model_len
from actorexec.protocol import ConfigError, SamplingParams
from tests.actors.model_runner.sim_scheduler import SimScheduler, make_runner
from tests.actors.reference import hf_greedy
from tests.checkpoints import TINY, make_tiny_checkpoint

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
         "max_position_embeddings": 256}


def write_config(directory: Path, architecture: str, generation: dict[str, Any] | None = None,
                 **fields: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(
        {"architectures": [architecture], **SHAPE, **fields}))
    if generation is not None:
        (directory / "generation_config.json").write_text(json.dumps(generation))
    return directory


@pytest.mark.parametrize("config_eos, generation_eos, expected", [
    (151645, [151645, 151643], (151645, 151643)),     # Qwen2.5-Instruct / Qwen3
    ([128001, 128008], 128009, (128001, 128008, 128009)),
    (None, [7, 9], (7, 9)),
    (2, None, (2,)),
])
def test_eos_ids_of_config_and_generation_config_are_merged(tmp_path, config_eos,
                                                            generation_eos, expected):
    generation = None if generation_eos is None else {"eos_token_id": generation_eos}
    path = write_config(tmp_path, "Qwen2ForCausalLM", generation, eos_token_id=config_eos)
    assert read_hf_config(path).eos_token_ids == expected


MISTRAL_V01 = {"sliding_window": 16}
QWEN2_SLIDING = {"sliding_window": 16, "use_sliding_window": True, "max_window_layers": 1}
QWEN2_LAYER_TYPES = {"sliding_window": 16, "layer_types": ["full_attention", "sliding_attention"]}


@pytest.mark.parametrize("architecture, fields", [
    ("MistralForCausalLM", MISTRAL_V01), ("Qwen2ForCausalLM", QWEN2_SLIDING),
    ("Qwen3ForCausalLM", QWEN2_SLIDING), ("Qwen2ForCausalLM", QWEN2_LAYER_TYPES)])
def test_a_sliding_window_the_sequences_could_outgrow_is_refused(tmp_path, architecture, fields):
    hf = read_hf_config(write_config(tmp_path, architecture, **fields))
    assert hf.sliding_window == 16
    with pytest.raises(ConfigError, match=r"sliding-window.*max_model_len=16"):
        resolve_max_model_len(hf, None)                # 256 > the window
    with pytest.raises(ConfigError, match="sliding-window"):
        resolve_max_model_len(hf, 17)
    assert resolve_max_model_len(hf, 16) == 16          # inside the window: full attention
    assert resolve_max_model_len(hf, 8) == 8


@pytest.mark.parametrize("architecture, fields", [
    ("MistralForCausalLM", {"sliding_window": None}),                 # Mistral v0.2+
    ("Qwen2ForCausalLM", {**QWEN2_SLIDING, "use_sliding_window": False}),  # Qwen2.5 as shipped
    ("Qwen2ForCausalLM", {**QWEN2_SLIDING, "max_window_layers": 2}),  # no layer slides
    ("Qwen2ForCausalLM", {"sliding_window": 16, "layer_types": ["full_attention"] * 2}),
    ("LlamaForCausalLM", {"sliding_window": 16}),                     # Llama ignores it
    ("MistralForCausalLM", {"sliding_window": 4096}),                 # window >= 256
])
def test_a_window_that_cannot_matter_is_accepted(tmp_path, architecture, fields):
    hf = read_hf_config(write_config(tmp_path, architecture, **fields))
    assert resolve_max_model_len(hf, None) == 256


def test_a_sliding_window_model_inside_its_window_matches_transformers(tmp_path):
    """The escape the error message offers (max_model_len=<window>) gives transformers'
    tokens: a Qwen2 checkpoint whose upper layers slide over 16 tokens, 16 tokens in all."""
    path = make_tiny_checkpoint(tmp_path / "qwen2-sliding", "qwen2", **{
        **{k: v for k, v in TINY.items() if k != "max_position_embeddings"},
        "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2})
    hf = read_hf_config(path)
    assert hf.sliding_window == 16
    max_len = resolve_max_model_len(hf, 16)
    sim = SimScheduler(make_runner(path, max_model_len=max_len))
    prompt = [1, 5, 9, 33, 77, 4, 12]
    sim.add("w", prompt, SamplingParams(temperature=0.0), max_tokens=9)   # 16 tokens in all
    assert sim.run()["w"] == hf_greedy(str(path), prompt, 9)


async def test_executor_create_refuses_an_outgrown_window_before_any_process_starts(tmp_path):
    from actorexec.actors.executor import Executor
    from actorexec.protocol import Config, ModelConfig, ParallelConfig
    path = write_config(tmp_path, "MistralForCausalLM", **MISTRAL_V01)
    config = Config(model=ModelConfig(model=str(path)),
                    parallel=ParallelConfig(distributed_executor_backend="mp"))
    before = set(multiprocessing.active_children())
    with pytest.raises(ConfigError, match="sliding-window"):
        await Executor.create(config)
    assert set(multiprocessing.active_children()) == before
