"""Configs are frozen, validated at construction, and survive the wire unchanged."""

import math

import msgspec
import pytest

from actorexec.protocol import (
    CacheConfig,
    Config,
    ConfigError,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    RestartConfig,
    SamplingParams,
    SchedulerConfig,
)
from actorexec.protocol.config import wire_config


def test_config_round_trips_through_msgpack_unchanged() -> None:
    config = Config(model=ModelConfig(model="/m", dtype="bfloat16"),
                    parallel=ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=2,
                                            pipeline_layer_split=(3, 1)),
                    cache=CacheConfig(block_size=8),
                    restart=RestartConfig(max_restarts=5, window_s=60.0, backoff_s=0.0))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(config), type=Config)
    assert decoded == config
    assert decoded.parallel.world_size == 4


@pytest.mark.parametrize("make", [
    lambda: ModelConfig(model="/m", dtype="float8"),
    lambda: ModelConfig(model="", dtype="auto"),
    lambda: ModelConfig(model="/m", load_format="pickle"),
    lambda: ModelConfig(model="/m", max_model_len=0),
    lambda: CacheConfig(block_size=0),
    lambda: CacheConfig(gpu_memory_utilization=1.5),
    lambda: ParallelConfig(tensor_parallel_size=0),
    lambda: ParallelConfig(pipeline_parallel_size=2, pipeline_layer_split=(4,)),
    lambda: ParallelConfig(transport="udp"),
    lambda: ParallelConfig(transport="tcp", host="0.0.0.0"),
    lambda: ParallelConfig(distributed_executor_backend="ray", transport="ipc"),
    lambda: ParallelConfig(distributed_executor_backend=3),
    lambda: ParallelConfig(worker_cls="no_colon"),
    lambda: SchedulerConfig(max_num_seqs=0),
    lambda: DeviceConfig(device="tpu"),
    lambda: RestartConfig(max_restarts=-1),
    lambda: RestartConfig(max_restarts=True),
    lambda: RestartConfig(window_s=0.0),
    lambda: RestartConfig(backoff_s=-0.1),
    lambda: RestartConfig(backoff_s=math.inf),
    lambda: RestartConfig(enabled=1),
    lambda: Config(model=ModelConfig(model="/m"), restart=ParallelConfig()),
    lambda: Config(model=ModelConfig(model="/m"),
                   parallel=ParallelConfig(tensor_parallel_size=2,
                                           distributed_executor_backend="uni")),
])
def test_bad_config_value_raises_config_error_at_construction(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_bad_value_arriving_on_the_wire_is_rejected_by_the_decoder() -> None:
    raw = msgspec.msgpack.encode({"model": {"model": "/m", "dtype": "int3"}})
    with pytest.raises(msgspec.ValidationError, match="dtype"):
        msgspec.msgpack.decode(raw, type=Config)


def test_configs_are_frozen() -> None:
    config = Config(model=ModelConfig(model="/m"))
    with pytest.raises(AttributeError):
        config.model = ModelConfig(model="/other")  # type: ignore[misc]
    assert config.replace(profile_dir="/tmp/p").profile_dir == "/tmp/p"
    assert config.profile_dir is None


def test_wire_config_names_an_executor_class_by_import_path() -> None:
    class MyExecutor:
        pass

    config = Config(model=ModelConfig(model="/m"),
                    parallel=ParallelConfig(distributed_executor_backend=MyExecutor))
    wired = wire_config(config)
    assert wired.parallel.distributed_executor_backend.endswith(":" + MyExecutor.__qualname__)
    msgspec.msgpack.decode(msgspec.msgpack.encode(wired), type=Config)


@pytest.mark.parametrize("kwargs", [
    {"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"min_p": 1.5}, {"max_tokens": 0},
    {"repetition_penalty": 0.0}, {"logprobs": 99}, {"min_tokens": 5, "max_tokens": 2},
    # Issue 8, defect 7: each of these was accepted and failed (or sampled NaN) later.
    {"top_k": 2**63}, {"seed": 2**64}, {"temperature": math.nan}, {"presence_penalty": math.nan},
    {"frequency_penalty": math.inf}, {"repetition_penalty": math.nan}, {"temperature": math.inf},
    {"top_p": math.nan}, {"frequency_penalty": 2.5}, {"max_tokens": 2**40},
    {"stop_token_ids": (-1,)}, {"stop_token_ids": (2**31,)}, {"top_k": 1.5},
    {"ignore_eos": "yes"}, {"logprobs": True}, {"temperature": 10**400},
])
def test_bad_sampling_params_raise(kwargs) -> None:
    with pytest.raises(ConfigError, match="SamplingParams"):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("top_k", [0, -1, None])
def test_top_k_zero_minus_one_and_none_all_mean_every_token(top_k) -> None:
    """Issue 8, defect 10: vLLM documents 0 and -1 as "consider all tokens"."""
    params = SamplingParams(top_k=top_k, seed=3)
    assert params.top_k is None and params == SamplingParams(seed=3)
    raw = msgspec.msgpack.encode({"top_k": top_k})
    assert msgspec.msgpack.decode(raw, type=SamplingParams).top_k is None


@pytest.mark.parametrize("make", [
    lambda: ModelConfig(model="/m", max_model_len=2.5),
    lambda: ModelConfig(model="/m", seed=2**64),
    lambda: ModelConfig(model="/m", enforce_eager="no"),
    lambda: CacheConfig(gpu_memory_utilization=math.nan),
    lambda: CacheConfig(num_blocks_override=2**40),
    lambda: ParallelConfig(worker_start_timeout_s=math.nan),
    lambda: ParallelConfig(worker_start_timeout_s=math.inf),
    lambda: ParallelConfig(host="127.0.0.1\n"),
    lambda: ParallelConfig(pipeline_parallel_size=2, pipeline_layer_split=(1.5, 2)),
    lambda: SchedulerConfig(max_num_seqs=True),
    lambda: SchedulerConfig(max_num_batched_tokens=math.nan),
    lambda: Config(model=ModelConfig(model="/m"), profile_dir=""),
])
def test_out_of_range_config_values_raise(make) -> None:
    """Issue 8, defect 7: NaN timeouts, fractional counts and the like were accepted."""
    with pytest.raises(ConfigError):
        make()
