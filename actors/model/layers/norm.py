"""RMSNorm, with the residual add fused in as in vLLM (saves one pass over activations)."""

from __future__ import annotations

import torch
from torch import nn

from actorexec.actors.model.layers.fused_ops import rms_norm


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as HF does, so low-precision runs match."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without residual: norm(x). With: (norm(x + residual), x + residual).

        One fused kernel on the GPU (fused_ops.rms_norm), HF's exact steps elsewhere.
        """
        return rms_norm(x, self.weight, self.eps, residual)
