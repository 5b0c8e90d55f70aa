"""Wire types and the codec: msgspec Structs only, no asyncio, no models.

The names below are what users of actorexec build and catch: configs,
per-request and per-step types, results and errors. The plumbing (envelopes,
the codec, method specs, KV-cache sizing helpers) lives in its submodule
(``actorexec.protocol.codec``, ``.envelopes``, ``.kv_cache``, ``.config``).
"""

from .config import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    RestartConfig,
    SchedulerConfig,
)
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
    RequestFailedError,
)
from .kv_cache import KVCacheConfig, KVCacheGroupSpec, KVCacheSpec
from .outputs import ModelRunnerOutput, StepTiming, TokenLogprobs
from .sampling import SamplingParams
from .scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput

__all__ = [
    "ActorClosedError", "ActorDiedError", "ActorexecError", "CacheConfig", "CachedRequestData",
    "Config", "ConfigError", "DeviceConfig", "ExecutorFailedError", "InvalidRequestError",
    "KVCacheConfig", "KVCacheGroupSpec", "KVCacheSpec", "MethodNotAllowedError", "ModelConfig",
    "ModelRunnerOutput", "NewRequestData", "ParallelConfig", "ProtocolError", "RemoteError",
    "RequestFailedError", "RestartConfig", "SamplingParams", "SchedulerConfig", "SchedulerOutput",
    "StepTiming", "TokenLogprobs",
]

# Plumbing that other layers still import from the package root; it is not
# public (not in __all__). Import it from its submodule; this block goes once
# runtime/, actors/executor/ and their tests do (see wip/validation's report).
from .codec import EnvelopeCodec  # noqa: F401
from .config import wire_config  # noqa: F401
from .envelopes import Call, Failure, Result  # noqa: F401
from .kv_cache import make_kv_cache_configs  # noqa: F401
