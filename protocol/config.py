"""Frozen, validated configuration Structs.

Every Config is immutable and validated at construction (``__post_init__``),
so a bad value raises :class:`ConfigError` before any process starts. Configs
are passed whole, never mutated; derived values (KV block counts) come back
from calls instead of being written into a config.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .checks import (
    INT64_MAX,
    INT64_MIN,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_str,
)
from .errors import ConfigError

DTYPES = ("auto", "float32", "float16", "bfloat16")
LOAD_FORMATS = ("auto", "safetensors", "dummy")
DEVICES = ("cpu", "cuda")
TRANSPORTS = ("shm", "ipc", "tcp")
ZMQ_BACKENDS = ("auto", "aiozmq", "pyzmq")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's names
MAX_BACKOFF_S = 60.0  # a restart never waits longer than this


_choice = check_choice


def _positive(owner: str, field: str, value: float | None, allow_none: bool = False) -> None:
    """A finite number > 0 (or None where allowed)."""
    if value is None and allow_none:
        return
    check_float(owner, field, value, 0.0, low_open=True)


def _count(owner: str, field: str, value: int | None, allow_none: bool = False) -> None:
    """An integer >= 1 that fits int32 (or None where allowed)."""
    if value is None and allow_none:
        return
    check_int(owner, field, value, 1)


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which checkpoint to run and how to load it.

    ``model`` is a local HF-format directory (config.json + *.safetensors).
    ``load_format="dummy"`` fills the right shapes with random weights (benchmarks).
    """

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    load_format: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    enforce_eager: bool = False  # True: no CUDA graphs (decode replays captured graphs on CUDA)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("ModelConfig.model must be a non-empty path to an HF model directory")
        check_str("ModelConfig", "model", self.model)
        if self.tokenizer is not None:
            check_str("ModelConfig", "tokenizer", self.tokenizer)
        _choice("ModelConfig", "dtype", self.dtype, DTYPES)
        _choice("ModelConfig", "load_format", self.load_format, LOAD_FORMATS)
        _count("ModelConfig", "max_model_len", self.max_model_len, allow_none=True)
        check_int("ModelConfig", "seed", self.seed, INT64_MIN, INT64_MAX)
        check_bool("ModelConfig", "enforce_eager", self.enforce_eager)


class CacheConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Paged KV cache settings.

    On CUDA the cache takes ``gpu_memory_utilization`` of device memory minus
    what the model and a profiling pass use; on the CPU it takes
    ``cpu_kv_cache_bytes``. ``num_blocks_override`` fixes the block count.
    """

    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_bytes: int = 256 * 1024 * 1024
    num_blocks_override: int | None = None

    def __post_init__(self) -> None:
        check_int("CacheConfig", "block_size", self.block_size, 1, 1024)
        check_float("CacheConfig", "gpu_memory_utilization", self.gpu_memory_utilization, 0.0, 1.0,
                    low_open=True)
        check_int("CacheConfig", "cpu_kv_cache_bytes", self.cpu_kv_cache_bytes, 1, INT64_MAX)
        _count("CacheConfig", "num_blocks_override", self.num_blocks_override, allow_none=True)


class ParallelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parallel layout and the executor backend.

    ``distributed_executor_backend``: ``"uni"``, ``"mp"``, ``"ray"``,
    ``"external_launcher"``, an ``Executor`` subclass, or ``"module:QualName"``;
    ``None`` picks ``"uni"`` for one rank and ``"mp"`` otherwise.
    ``pipeline_layer_split`` gives the number of decoder layers per stage
    (default: as even as possible, earlier stages taking the remainder).
    ``transport`` (``mp``): ``"shm"`` (same-host ranks over shared-memory rings;
    the default, on Linux), ``"ipc"`` (ZeroMQ over unix sockets; where shared
    memory is not available) or ``"tcp"`` (ZeroMQ; binds to ``host`` only).
    For ``ray``: ``"shm"`` (the default) serves ranks on the driver's own Ray
    node over shared-memory rings and the others over tcp on their node's IP;
    ``"tcp"`` uses tcp for every rank; ``"ipc"`` is refused. ``ray_address`` is the Ray
    cluster to join (None: ``RAY_ADDRESS``, else a local one-node cluster);
    ``placement_strategy`` is the Ray placement group's strategy over the
    ``tp x pp`` bundles.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    pipeline_layer_split: tuple[int, ...] | None = None
    # str | type[Executor] | None; Any because a class never crosses the wire
    # (wire_config turns it into "module:QualName" first).
    distributed_executor_backend: Any = None
    transport: str = "shm"
    host: str = "127.0.0.1"
    zmq_backend: str = "auto"
    allow_callable_rpc: bool = False
    # "module:QualName" of the worker actor class each rank runs.
    worker_cls: str = "actorexec.actors.worker:Worker"
    worker_start_timeout_s: float = 180.0
    # Forward-progress watchdog: a step (execute_model) running longer fails the executor,
    # naming the rank and the step. None turns it off.
    step_timeout_s: float | None = 300.0
    # The "ray" backend: which cluster (None: RAY_ADDRESS, else a local one), and how the
    # placement group spreads the ranks' bundles over its nodes.
    ray_address: str | None = None
    placement_strategy: str = "PACK"

    def __post_init__(self) -> None:
        check_str("ParallelConfig", "host", self.host, 255)
        check_str("ParallelConfig", "worker_cls", self.worker_cls)
        check_bool("ParallelConfig", "allow_callable_rpc", self.allow_callable_rpc)
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ParallelConfig.{name} must be an integer >= 1, got {value!r}")
        if self.pipeline_layer_split is not None:
            split = self.pipeline_layer_split
            for n in split:
                check_int("ParallelConfig", "pipeline_layer_split[...]", n, 1)
            if len(split) != self.pipeline_parallel_size:
                raise ConfigError(
                    f"ParallelConfig.pipeline_layer_split={split!r} must give a positive layer "
                    f"count for each of the {self.pipeline_parallel_size} pipeline stages")
        backend = self.distributed_executor_backend
        if backend is not None and not isinstance(backend, (str, type)):
            raise ConfigError("ParallelConfig.distributed_executor_backend must be 'uni', 'mp', "
                              "'ray', 'external_launcher', an Executor subclass or "
                              f"'module:QualName', got {backend!r}")
        _choice("ParallelConfig", "transport", self.transport, TRANSPORTS)
        _choice("ParallelConfig", "zmq_backend", self.zmq_backend, ZMQ_BACKENDS)
        if backend == "ray" and self.transport == "ipc":
            raise ConfigError("ParallelConfig.transport='ipc' is not offered by the ray "
                              "backend: use 'shm' (same-node ranks over shared memory, the "
                              "rest over tcp) or 'tcp'")
        if self.transport == "tcp" and self.host in ("", "*", "0.0.0.0", "::"):
            raise ConfigError("ParallelConfig.host must name one interface for tcp; "
                              "binding all interfaces is refused")
        if ":" not in self.worker_cls:
            raise ConfigError(f"ParallelConfig.worker_cls must be 'module:QualName', "
                              f"got {self.worker_cls!r}")
        _positive("ParallelConfig", "worker_start_timeout_s", self.worker_start_timeout_s)
        _positive("ParallelConfig", "step_timeout_s", self.step_timeout_s, allow_none=True)
        if self.ray_address is not None:
            check_str("ParallelConfig", "ray_address", self.ray_address, 1024)
        _choice("ParallelConfig", "placement_strategy", self.placement_strategy,
                PLACEMENT_STRATEGIES)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Batch limits for the reference engine's scheduler.

    ``async_scheduling``: the engine sends a request's next decode step before
    the previous one's tokens come back; the runners feed each sampled token
    to the next step on the device (docs/engine.md, "Async scheduling"), and
    ``max_concurrent_batches`` is one more than the pipeline depth. False: a
    request runs again only after its tokens reached the host.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    async_scheduling: bool = True

    def __post_init__(self) -> None:
        _count("SchedulerConfig", "max_num_seqs", self.max_num_seqs)
        _count("SchedulerConfig", "max_num_batched_tokens", self.max_num_batched_tokens)
        check_bool("SchedulerConfig", "enable_chunked_prefill", self.enable_chunked_prefill)
        check_bool("SchedulerConfig", "async_scheduling", self.async_scheduling)


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the model runs: ``"cpu"`` or ``"cuda"`` (one GPU per rank)."""

    device: str = "cpu"

    def __post_init__(self) -> None:
        _choice("DeviceConfig", "device", self.device, DEVICES)


class RestartConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether the engine restarts a failed executor, and how often.

    When the executor fails (a worker died, the ranks diverged, the watchdog
    fired), the engine replaces it with a fresh one and resumes every request by
    recompute, at most ``max_restarts`` times within any ``window_s`` seconds;
    past that, or with ``enabled=False``, it fails as before (every stream raises
    the executor's error). Before the k-th restart in the window it waits
    ``backoff_s * 2**(k-1)`` seconds (at most ``MAX_BACKOFF_S``).
    """

    enabled: bool = True
    max_restarts: int = 3
    window_s: float = 300.0
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        check_bool("RestartConfig", "enabled", self.enabled)
        check_int("RestartConfig", "max_restarts", self.max_restarts, 0)
        _positive("RestartConfig", "window_s", self.window_s)
        check_float("RestartConfig", "backoff_s", self.backoff_s, 0.0, MAX_BACKOFF_S)


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an executor and its workers need, passed whole to each worker."""

    model: ModelConfig
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    parallel: ParallelConfig = msgspec.field(default_factory=ParallelConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    device: DeviceConfig = msgspec.field(default_factory=DeviceConfig)
    restart: RestartConfig = msgspec.field(default_factory=RestartConfig)
    profile_dir: str | None = None

    def __post_init__(self) -> None:
        parts = (("model", ModelConfig), ("cache", CacheConfig), ("parallel", ParallelConfig),
                 ("scheduler", SchedulerConfig), ("device", DeviceConfig),
                 ("restart", RestartConfig))
        for name, kind in parts:
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"Config.{name} must be a {kind.__name__}")
        if self.profile_dir is not None:
            check_str("Config", "profile_dir", self.profile_dir)
        backend = self.parallel.distributed_executor_backend
        if backend == "uni" and self.parallel.world_size > 1:
            raise ConfigError(
                f"the 'uni' backend runs one rank, but tensor_parallel_size x "
                f"pipeline_parallel_size = {self.parallel.world_size}; use backend 'mp'")

    def replace(self, **changes: object) -> Config:
        """A copy with some top-level parts replaced (configs are never mutated)."""
        return msgspec.structs.replace(self, **changes)


def wire_config(config: Config) -> Config:
    """The config as sent to workers: an executor class becomes ``"module:QualName"``."""
    backend = config.parallel.distributed_executor_backend
    if isinstance(backend, type):
        name = f"{backend.__module__}:{backend.__qualname__}"
        parallel = msgspec.structs.replace(config.parallel, distributed_executor_backend=name)
        return msgspec.structs.replace(config, parallel=parallel)
    return config
