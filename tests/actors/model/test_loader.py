"""Loading HF checkpoints: multi-shard, dummy weights, and clear errors naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actorexec.actors.model.hf_config import read_hf_config
from actorexec.actors.model.loader import WeightLoadError, load_model
from actorexec.actors.model.parallel import ParallelContext
from actorexec.protocol import ConfigError
from tests.checkpoints import make_tiny_checkpoint

CPU = torch.device("cpu")


def _load(path: Path, load_format: str = "auto") -> torch.nn.Module:
    cfg = read_hf_config(path)
    return load_model(cfg, path, ParallelContext.single(cfg.num_layers), torch.float32, CPU,
                      load_format)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("one"), "llama")


def test_multi_shard_checkpoint_loads_the_same_weights(single, tmp_path):
    sharded = make_tiny_checkpoint(tmp_path, "llama", max_shard_size="40KB")
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a, b = _load(single), _load(sharded)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_dummy_weights_have_the_right_shapes(single):
    model = _load(single, "dummy")
    qkv = model.model.layers["0"].self_attn.qkv_proj.weight
    assert qkv.shape == (16 * (4 + 2 + 2), 64) and qkv.abs().sum() > 0


def _rewrite(src: Path, dst: Path, change) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    change(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_missing_tensor_is_named(single, tmp_path):
    path = _rewrite(single, tmp_path / "m", lambda t: t.pop("model.layers.2.mlp.down_proj.weight"))
    with pytest.raises(WeightLoadError, match=r"model\.layers\.2\.mlp\.down_proj\.weight"):
        _load(path)


def test_shape_mismatch_is_named(single, tmp_path):
    def shrink(t: dict) -> None:
        t["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    path = _rewrite(single, tmp_path / "s", shrink)
    with pytest.raises(WeightLoadError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        _load(path)


def test_unsupported_architecture_is_named(single, tmp_path):
    cfg = json.loads((single / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel"):
        read_hf_config(tmp_path)


def test_old_style_rope_config_is_read(single, tmp_path):
    cfg = json.loads((single / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 500000.0
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = read_hf_config(tmp_path)
    assert hf.rope_theta == 500000.0 and hf.rope_scaling["factor"] == 8.0
    assert hf.eos_token_ids == (2,)
