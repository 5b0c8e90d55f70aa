"""KV-cache description: what each rank needs per block, and what it was given."""

from __future__ import annotations

import msgspec

from .checks import check_choice, check_int, check_str
from .errors import ConfigError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class KVCacheSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One attention layer's paged cache: K and V of ``block_size`` tokens per block."""

    block_size: int
    num_kv_heads: int
    head_size: int
    dtype: str

    def __post_init__(self) -> None:
        check_int("KVCacheSpec", "block_size", self.block_size, 1, 1024)
        check_int("KVCacheSpec", "num_kv_heads", self.num_kv_heads, 1, 4096)
        check_int("KVCacheSpec", "head_size", self.head_size, 1, 4096)
        check_choice("KVCacheSpec", "dtype", self.dtype, DTYPE_BYTES)

    @property
    def page_size_bytes(self) -> int:
        """Bytes one block takes in one layer (K and V)."""
        return 2 * self.block_size * self.num_kv_heads * self.head_size * DTYPE_BYTES[self.dtype]


class KVCacheGroupSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Layers that share one block table (all of them, for full attention)."""

    layer_names: tuple[str, ...]
    kv_cache_spec: KVCacheSpec

    def __post_init__(self) -> None:
        if not self.layer_names:
            raise ConfigError("KVCacheGroupSpec.layer_names must name at least one layer")
        for name in self.layer_names:
            check_str("KVCacheGroupSpec", "layer_names[...]", name, 256)
        if not isinstance(self.kv_cache_spec, KVCacheSpec):
            raise ConfigError("KVCacheGroupSpec.kv_cache_spec must be a KVCacheSpec")


class KVCacheConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a worker allocates: ``num_blocks`` blocks for each of its layers.

    Every rank gets the same ``num_blocks`` (the minimum over ranks), so one
    block id means the same slots on every rank; ``kv_cache_groups`` lists the
    rank's own layers (pipeline stages hold different layers).
    """

    num_blocks: int
    kv_cache_groups: tuple[KVCacheGroupSpec, ...]

    def __post_init__(self) -> None:
        check_int("KVCacheConfig", "num_blocks", self.num_blocks, 1)
        if not self.kv_cache_groups:
            raise ConfigError("KVCacheConfig.kv_cache_groups must hold at least one group")
        if any(not isinstance(g, KVCacheGroupSpec) for g in self.kv_cache_groups):
            raise ConfigError("KVCacheConfig.kv_cache_groups must hold KVCacheGroupSpecs")

    @property
    def block_size(self) -> int:
        return self.kv_cache_groups[0].kv_cache_spec.block_size


def bytes_per_block(specs: dict[str, KVCacheSpec]) -> int:
    """Bytes one block id costs on a rank, over all its layers."""
    return sum(spec.page_size_bytes for spec in specs.values())


def num_blocks_for(specs: dict[str, KVCacheSpec], available_bytes: int) -> int:
    """How many blocks fit a rank's budget."""
    per_block = bytes_per_block(specs)
    return available_bytes // per_block if per_block else 0


def make_kv_cache_configs(specs_per_rank: list[dict[str, KVCacheSpec]],
                          available_per_rank: list[int],
                          num_blocks_override: int | None = None) -> list[KVCacheConfig]:
    """One KVCacheConfig per rank with a common block count (the smallest that fits)."""
    if num_blocks_override is not None:
        num_blocks = num_blocks_override
    else:
        num_blocks = min(num_blocks_for(s, b) for s, b in zip(specs_per_rank, available_per_rank,
                                                               strict=True))
    if num_blocks < 1:
        raise ConfigError(
            "the KV cache budget holds no block: raise CacheConfig.cpu_kv_cache_bytes (CPU) or "
            "gpu_memory_utilization (CUDA), or shrink block_size / max_model_len")
    configs = []
    for specs in specs_per_rank:
        groups: dict[KVCacheSpec, list[str]] = {}
        for layer, spec in specs.items():
            groups.setdefault(spec, []).append(layer)
        configs.append(KVCacheConfig(num_blocks=num_blocks, kv_cache_groups=tuple(
            KVCacheGroupSpec(layer_names=tuple(names), kv_cache_spec=spec)
            for spec, names in groups.items())))
    return configs
