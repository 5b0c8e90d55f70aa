"""Tensor-parallel linear layers: the only place TP touches the model.

Each sharded module has a ``weight_loader(param, source, shard_id)`` (on the
module, not the parameter: ``to_empty`` recreates parameters) that reads
this rank's slice straight from a checkpoint tensor (``source`` is a
safetensors slice or a ``TensorSource``), so a rank never
materialises weights it does not hold.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from actorexec.actors.model.parallel import ParallelContext


class WeightSource(Protocol):
    """A lazily read checkpoint tensor: safetensors' ``get_slice`` result."""

    def get_shape(self) -> list[int]: ...
    def __getitem__(self, index: Any) -> torch.Tensor: ...


class TensorSource:
    """Adapts an in-memory tensor to the WeightSource interface (tests, tied weights)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self.tensor.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.tensor[index]


class WeightShapeError(ValueError):
    """A checkpoint tensor's shape does not match the model (raised by weight loaders)."""


def read_rows(source: WeightSource, dim: int, start: int, size: int,
              expected_full: int) -> torch.Tensor:
    """Reads ``[start, start + size)`` of dimension ``dim`` (0 or 1) after checking its length."""
    shape = source.get_shape()
    if len(shape) <= dim or shape[dim] != expected_full:
        raise WeightShapeError(f"expected size {expected_full} in dim {dim}, got shape {shape}")
    index = slice(start, start + size)
    return source[index] if dim == 0 else source[:, index]


def copy_checked(param: torch.Tensor, value: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(param.shape):
        raise WeightShapeError(f"expected shape {tuple(param.shape)}, got {tuple(value.shape)}")
    param.data.copy_(value.to(param.dtype))


def default_weight_loader(param: torch.Tensor, source: WeightSource,
                          shard_id: Any = None) -> None:
    """Replicated parameter: the whole tensor, shape-checked."""
    copy_checked(param, source[:])


def _param(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W's output rows split across TP ranks; output stays sharded."""

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        self.parallel, self.out_features = parallel, out_features
        self.out_per_rank = out_features // parallel.tp_size
        self.weight = _param(self.out_per_rank, in_features, dtype=dtype)
        self.bias = _param(self.out_per_rank, dtype=dtype) if bias else None

    def weight_loader(self, param: torch.Tensor, source: WeightSource,
                      shard_id: Any = None) -> None:
        start, _ = self.parallel.shard_range(self.out_features)
        copy_checked(param, read_rows(source, 0, start, self.out_per_rank, self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # [T, out_per_rank]


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections (gate and up) as one matmul.

    Each rank holds its shard of every part, back to back, so splitting the
    output gives each part's local shard.
    """

    def __init__(self, in_features: int, part_sizes: list[int], bias: bool,
                 parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__(in_features, sum(part_sizes), bias, parallel, dtype)
        self.part_sizes = part_sizes

    def weight_loader(self, param: torch.Tensor, source: WeightSource,
                      shard_id: Any = None) -> None:
        full = self.part_sizes[shard_id]
        per = full // self.parallel.tp_size
        offset = sum(self.part_sizes[:shard_id]) // self.parallel.tp_size
        start, _ = self.parallel.shard_range(full)
        copy_checked(param.data[offset:offset + per], read_rows(source, 0, start, per, full))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections as one matmul; heads split by rank, kv replicated if kv < tp."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool, parallel: ParallelContext, dtype: torch.dtype) -> None:
        self.head_dim, self.num_heads, self.num_kv_heads = head_dim, num_heads, num_kv_heads
        self.heads_per_rank = num_heads // parallel.tp_size
        self.kv_start, self.kv_per_rank = parallel.kv_head_shard(num_kv_heads)
        out = (self.heads_per_rank + 2 * self.kv_per_rank) * head_dim * parallel.tp_size
        super().__init__(hidden, out, bias, parallel, dtype)

    def weight_loader(self, param: torch.Tensor, source: WeightSource,
                      shard_id: Any = None) -> None:
        d = self.head_dim
        q, kv = self.heads_per_rank * d, self.kv_per_rank * d
        if shard_id == "q":
            offset, size, start = 0, q, self.parallel.tp_rank * q
            full = self.num_heads * d
        else:
            offset = q if shard_id == "k" else q + kv
            size, start, full = kv, self.kv_start * d, self.num_kv_heads * d
        copy_checked(param.data[offset:offset + size], read_rows(source, 0, start, size, full))

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, (Hq + 2 Hkv) D] -> q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D] (this rank's)."""
        d = self.head_dim
        q, k, v = qkv.split([self.heads_per_rank * d, self.kv_per_rank * d,
                             self.kv_per_rank * d], dim=-1)
        return (q.view(-1, self.heads_per_rank, d), k.view(-1, self.kv_per_rank, d),
                v.view(-1, self.kv_per_rank, d))


class RowParallelLinear(nn.Module):
    """y = x W^T with W's input columns split across ranks; one all-reduce sums the parts."""

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 parallel: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        self.parallel, self.in_features = parallel, in_features
        self.in_per_rank = in_features // parallel.tp_size
        self.weight = _param(out_features, self.in_per_rank, dtype=dtype)
        self.bias = _param(out_features, dtype=dtype) if bias else None

    def weight_loader(self, param: torch.Tensor, source: WeightSource,
                      shard_id: Any = None) -> None:
        if param is self.bias:
            return default_weight_loader(param, source)
        start, _ = self.parallel.shard_range(self.in_features)
        copy_checked(param, read_rows(source, 1, start, self.in_per_rank, self.in_features))

    def forward(self, x: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        """x: [T, in_per_rank] -> [T, out] summed over TP ranks, or with ``reduce=False``
        this rank's partial sum (the caller sums it: ParallelContext.reduce_add_norm)."""
        if not reduce and self.bias is not None:
            raise ValueError("a row-parallel layer with a bias cannot leave its sum to the "
                             "caller (the bias must be added once, after the sum)")
        out = self.parallel.row_linear(x, self.weight, reduce)
        return out if self.bias is None else out + self.bias
