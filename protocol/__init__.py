"""Wire types and the codec: msgspec Structs only, no asyncio, no models."""

from .codec import (
    EnvelopeCodec,
    MethodSpec,
    PayloadDecoder,
    PayloadEncoder,
    TensorRef,
    build_method_specs,
    generic_spec,
)
from .config import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    wire_config,
)
from .envelopes import Call, Envelope, Failure, Ready, Result
from .errors import (
    ActorClosedError,
    ActorDiedError,
    ActorexecError,
    ConfigError,
    ExecutorFailedError,
    InvalidRequestError,
    MethodNotAllowedError,
    ProtocolError,
    RemoteError,
)
from .kv_cache import (
    KVCacheConfig,
    KVCacheGroupSpec,
    KVCacheSpec,
    make_kv_cache_configs,
    num_blocks_for,
)
from .outputs import ModelRunnerOutput, StepTiming, TokenLogprobs
from .sampling import SamplingParams
from .scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput

__all__ = [
    "ActorClosedError", "ActorDiedError", "ActorexecError", "CacheConfig", "CachedRequestData",
    "Call", "Config", "ConfigError", "DeviceConfig", "Envelope", "EnvelopeCodec",
    "ExecutorFailedError", "Failure", "InvalidRequestError", "KVCacheConfig", "KVCacheGroupSpec",
    "KVCacheSpec", "MethodNotAllowedError", "MethodSpec", "ModelConfig", "ModelRunnerOutput",
    "NewRequestData", "ParallelConfig", "PayloadDecoder", "PayloadEncoder", "ProtocolError",
    "Ready", "RemoteError", "Result", "SamplingParams", "SchedulerConfig", "SchedulerOutput",
    "StepTiming",
    "TensorRef", "TokenLogprobs", "build_method_specs", "generic_spec", "make_kv_cache_configs",
    "num_blocks_for", "wire_config",
]
