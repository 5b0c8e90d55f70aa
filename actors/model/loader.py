"""Builds a model on the meta device and streams this rank's weight slices into it.

Shards are opened one at a time with ``safe_open`` and each tensor is read
through ``get_slice``, so only this rank's slice of one tensor is ever in
memory beyond the model itself (never the whole model twice).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from actorexec.actors.model.hf_config import HFModelConfig
from actorexec.actors.model.layers.linear import WeightShapeError, default_weight_loader
from actorexec.actors.model.layers.rotary import RotaryEmbedding
from actorexec.actors.model.llama import LlamaForCausalLM
from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model.registry import model_class
from actorexec.protocol.errors import ConfigError

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


class WeightLoadError(ConfigError):
    """The checkpoint does not fit the model: a missing tensor or a wrong shape (named)."""


def resolve_dtype(requested: str, cfg: HFModelConfig, device: torch.device) -> torch.dtype:
    """``auto`` takes the checkpoint's dtype, except half precision on the CPU -> float32."""
    if requested != "auto":
        return TORCH_DTYPES[requested]
    dtype = TORCH_DTYPES.get(cfg.torch_dtype, torch.float32)
    return torch.float32 if device.type == "cpu" and dtype == torch.float16 else dtype


def build_model(cfg: HFModelConfig, parallel: ParallelContext, dtype: torch.dtype,
                device: torch.device) -> LlamaForCausalLM:
    """The model with uninitialised storage on ``device`` (no host-side copy first)."""
    with torch.device("meta"):
        model = model_class(cfg)(cfg, parallel, dtype)
    model = model.to_empty(device=device).eval()
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.init_buffers(device)
    return model


def shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"no *.safetensors files in model directory {str(path)!r}")
    return files


def _targets(model: LlamaForCausalLM, name: str) -> list[tuple[str, object]]:
    """(our parameter name, shard id) that checkpoint tensor ``name`` loads into."""
    if name.endswith("rotary_emb.inv_freq"):
        return []
    out: list[tuple[str, object]] = []
    for fused, part, shard in model.stacked_params:
        if f".{part}." in name:
            return [(name.replace(f".{part}.", f".{fused}."), shard)]
    out.append((name, None))
    # Tied LM head on a last stage without the embedding: load it from the embedding.
    if name == "model.embed_tokens.weight" and model.config.tie_word_embeddings:
        out.append(("lm_head.weight", None))
    return out


def load_weights(model: LlamaForCausalLM, path: str | Path, progress: bool = True) -> None:
    """Streams every shard into ``model``; raises WeightLoadError naming a bad tensor."""
    path = Path(path)
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    pending = set(params)
    if model.config.tie_word_embeddings and "model.embed_tokens.weight" in params:
        pending.discard("lm_head.weight")  # shares the embedding's storage
    files = shard_files(path)
    for file in _progress(files, show=progress and len(files) > 1):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                for target, shard in _targets(model, name):
                    param = params.get(target)
                    if param is None:
                        continue  # another stage's layer, or a tied head
                    owner = modules[target.rpartition(".")[0]]
                    loader = getattr(owner, "weight_loader", default_weight_loader)
                    try:
                        loader(param, f.get_slice(name), shard)
                    except WeightShapeError as e:
                        raise WeightLoadError(
                            f"checkpoint tensor {name!r} in {file.name} does not fit "
                            f"parameter {target!r}: {e}") from None
                    pending.discard(target)
    if pending:
        raise WeightLoadError(f"checkpoint {str(path)!r} lacks tensors for "
                              f"{sorted(pending)[:8]}{' ...' if len(pending) > 8 else ''}")


def _progress(files: list[Path], show: bool) -> list[Path] | tqdm:
    """``files``, with a progress bar when ``show``.

    tqdm's default lock is a multiprocessing RLock: a named semaphore in
    /dev/shm that a SIGKILLed worker leaves behind. It is created by any bar,
    even a disabled one, so: no bar unless shown, and a thread lock (one
    process's bars need no more).
    """
    if not show:
        return files
    if "_lock" not in vars(tqdm):  # never replace a lock someone else chose
        tqdm.set_lock(threading.RLock())
    return tqdm(files, desc="loading shards", unit="shard")


def init_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Random weights of the right shapes (benchmarks): small normal, norms at 1.

    Drawn in place on the parameters' device: a multi-GB model never passes
    through host memory.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
        else:
            param.data.normal_(0.0, 0.02, generator=gen)


def load_model(cfg: HFModelConfig, path: str | Path, parallel: ParallelContext,
               dtype: torch.dtype, device: torch.device, load_format: str = "auto",
               seed: int = 0) -> LlamaForCausalLM:
    """Builds this rank's part of the model and fills it (checkpoint or dummy)."""
    model = build_model(cfg, parallel, dtype, device)
    if load_format == "dummy":
        init_dummy_weights(model, seed + parallel.rank)
    else:
        load_weights(model, path)
    return model
