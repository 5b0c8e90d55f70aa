"""vLLM's shared-memory ``MessageQueue``, wired the way its multiprocess executor wires it.

The baseline of ``rpc_roundtrip.py`` (optional: used only when vLLM imports;
``pip install --no-deps vllm`` plus ``psutil`` is enough for this module, and it
is never a dependency of actorexec). One broadcast queue from the driver to
every worker (``MessageQueue(n, n)``), one response queue per worker
(``MessageQueue(1, 1)``), handles exchanged at start-up, and each worker in
vLLM's ``worker_busy_loop``: dequeue ``(method, args, kwargs, output_rank)``,
run it, enqueue ``(status, output)`` if it is the output rank (or every rank
answers when ``output_rank`` is None).

Payloads (vLLM pickles them): ``vllm_decode_step`` builds the 256-request
decode step the way vLLM 0.33's scheduler does, and the worker answers with
vLLM's ``ModelRunnerOutput`` layout (``VllmSchedulerOutput``,
``VllmCachedRequestData``, ``VllmModelRunnerOutput``: dataclasses with the
fields of ``vllm.v1.core.sched.output`` and ``vllm.v1.outputs``, which do not
import without vLLM's compiled parts; pickle carries a dataclass as its
``__dict__``, so the bytes and the work are those of the real classes). Given
actorexec's own ``SchedulerOutput`` instead, the worker answers with
actorexec's ``ModelRunnerOutput``: the same objects on both sides, the
transport alone compared.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VllmCachedRequestData:
    """vLLM 0.33's ``CachedRequestData`` fields (one list entry per running request)."""

    req_ids: list[str]
    resumed_req_ids: set[str]
    new_token_ids: list[list[int]]   # empty unless pipeline parallel without async scheduling
    all_token_ids: dict[str, list[int]]
    new_block_ids: list[tuple[list[int], ...] | None]  # None: no new block this step
    num_computed_tokens: list[int]
    num_output_tokens: list[int]


@dataclass
class VllmSchedulerOutput:
    """vLLM 0.33's ``SchedulerOutput`` fields, with the defaults a plain decode step has."""

    scheduled_new_reqs: list[Any]
    scheduled_cached_reqs: VllmCachedRequestData
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    scheduled_spec_decode_tokens: dict[str, list[int]]
    scheduled_encoder_inputs: dict[str, list[int]]
    finished_req_ids: set[str]
    free_encoder_mm_hashes: list[str]
    encoder_input_updates: dict[str, Any] = field(default_factory=dict)
    scheduled_encoder_input_stats: Any = None
    preempted_req_ids: set[str] | None = None
    has_structured_output_requests: bool = False
    pending_structured_output_tokens: bool = False
    num_invalid_spec_tokens: dict[str, int] | None = None
    kv_connector_metadata: Any = None
    has_sync_kv_loads: bool = False
    aux_output_connector_metadata: Any = None
    ec_connector_metadata: Any = None
    ec_manager_metadata: Any = None
    new_block_ids_to_zero: list[int] | None = None
    kv_cache_block_copies: list[Any] | None = None
    kv_connector_block_state: Any = None
    num_spec_tokens_to_schedule: int = 0
    num_common_prefix_blocks: list[int] = field(default_factory=list)
    skip_drafts: bool = False


@dataclass
class VllmModelRunnerOutput:
    """vLLM 0.33's ``ModelRunnerOutput`` fields (sampled ids one list per request)."""

    req_ids: list[str]
    req_id_to_index: dict[str, int]
    sampled_token_ids: list[list[int]] = field(default_factory=list)
    logprobs: Any = None
    prompt_logprobs_dict: dict[str, Any] = field(default_factory=dict)
    prompt_token_id_logprobs_dict: dict[str, Any] = field(default_factory=dict)
    pooler_output: list[Any] | None = None
    kv_connector_output: Any = None
    ec_connector_output: Any = None
    num_nans_in_logits: dict[str, int] | None = None
    cudagraph_stats: Any = None
    aux_output_connector_output: dict[str, Any] | None = None
    sampling_masks: Any = None


def vllm_decode_step(n: int = 256, step: int = 1) -> VllmSchedulerOutput:
    """A decode step of ``n`` running requests as vLLM 0.33's scheduler builds it (one
    GPU, no pipeline parallelism: the runner keeps sampled tokens, none are sent)."""
    ids = [f"req-{i}" for i in range(n)]
    cached = VllmCachedRequestData(
        req_ids=ids, resumed_req_ids=set(), new_token_ids=[], all_token_ids={},
        new_block_ids=[None] * n, num_computed_tokens=[100 + i for i in range(n)],
        num_output_tokens=[step + i % 7 for i in range(n)])
    return VllmSchedulerOutput(
        scheduled_new_reqs=[], scheduled_cached_reqs=cached,
        num_scheduled_tokens=dict.fromkeys(ids, 1), total_num_scheduled_tokens=n,
        scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={}, finished_req_ids=set(),
        free_encoder_mm_hashes=[], num_common_prefix_blocks=[0])


def _echo_output(so: Any) -> Any:
    """The reply to ``so``: the step id as each request's token, in ``so``'s own layout."""
    from actorexec.protocol import ModelRunnerOutput
    from actorexec.protocol.columns import pack_int32

    if isinstance(so, VllmSchedulerOutput):
        req_ids = list(so.num_scheduled_tokens)
        return VllmModelRunnerOutput(req_ids=req_ids,
                                     req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                     sampled_token_ids=[[1]] * len(req_ids))
    return ModelRunnerOutput(step_id=so.step_id,  # as EchoRunner builds it
                             sampled_token_ids=pack_int32([so.step_id] * so.num_reqs))


def vllm_available() -> str | None:
    """vLLM's version if its MessageQueue imports here, else None."""
    try:
        import vllm
        from vllm.distributed.device_communicators.shm_broadcast import MessageQueue  # noqa: F401
    except Exception:
        return None
    return getattr(vllm, "__version__", "unknown")


def _worker(handle: Any, rank: int, conn: Any) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    calls = MessageQueue.create_from_handle(handle, rank)
    replies = MessageQueue(1, 1)
    conn.send(replies.export_handle())
    calls.wait_until_ready()
    replies.wait_until_ready()
    while True:  # vLLM's worker_busy_loop
        method, args, _kwargs, output_rank = calls.dequeue(indefinite=True)
        if method == "stop":
            break
        output = None
        if method == "execute_model" and rank == (output_rank or 0):
            output = _echo_output(args[0])  # as EchoRunner
        if output_rank is None or rank == output_rank:
            replies.enqueue((0, output))


class VllmQueueHarness:
    """``workers`` processes behind vLLM's queues; ``call`` is one collective RPC."""

    def __init__(self, workers: int) -> None:
        from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

        ctx = multiprocessing.get_context("spawn")
        self.calls = MessageQueue(workers, workers)
        pipes = [ctx.Pipe() for _ in range(workers)]
        self.processes = [ctx.Process(target=_worker, daemon=True,
                                      args=(self.calls.export_handle(), rank, child))
                          for rank, (_, child) in enumerate(pipes)]
        for p in self.processes:
            p.start()
        self.replies = [MessageQueue.create_from_handle(parent.recv(), 0) for parent, _ in pipes]
        self.calls.wait_until_ready()
        for queue in self.replies:
            queue.wait_until_ready()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def call(self, method: str, args: tuple, output_rank: int | None) -> list[Any]:
        self.calls.enqueue((method, args, {}, output_rank))
        queues = self.replies if output_rank is None else [self.replies[output_rank]]
        return [queue.dequeue()[1] for queue in queues]

    def close(self) -> None:
        self.calls.enqueue(("stop", (), {}, None))
        for p in self.processes:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join()
