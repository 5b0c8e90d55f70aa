"""Rotary position embeddings (RoPE), neox layout (rotate halves) as HF Llama/Qwen use.

The cos/sin table is built once per device for ``max_position`` positions and
indexed by each token's position, so prefill, chunked prefill and decode
tokens of different requests rotate correctly in one flat batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from actorexec.actors.model.layers.fused_ops import rope_


def _inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv_freq
    # Llama 3: slow down low frequencies by `factor`, keep high ones, blend between.
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to q and k given each token's absolute position."""

    def __init__(self, head_dim: int, max_position: int, theta: float,
                 scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head_dim, self.max_position = head_dim, max_position
        self.theta, self.scaling = theta, scaling
        self.cos_sin: torch.Tensor | None = None  # [max_position, head_dim] cos | sin halves

    def init_buffers(self, device: torch.device) -> None:
        """Builds the table on ``device`` (after meta construction; float32 for accuracy)."""
        inv_freq = _inv_freq(self.head_dim, self.theta, self.scaling)
        t = torch.arange(self.max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_position, head_dim / 2]
        self.cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)

    def table(self, device: torch.device) -> torch.Tensor:
        """The ``[max_position, head_dim]`` cos | sin table on ``device`` (built on first use)."""
        if self.cos_sin is None or self.cos_sin.device != device:
            self.init_buffers(device)
        assert self.cos_sin is not None
        return self.cos_sin

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [num_tokens, num_heads, head_dim], k: [num_tokens, num_kv_heads, head_dim]
        if self.cos_sin is None or self.cos_sin.device != q.device:
            self.init_buffers(q.device)
        assert self.cos_sin is not None
        # In place on the GPU (one kernel each for q and k); new tensors on the CPU.
        return rope_(q, k, self.cos_sin, positions)
