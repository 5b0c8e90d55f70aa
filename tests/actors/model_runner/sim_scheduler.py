"""A tiny scheduler that drives a ModelRunner directly: block allocation, chunked
prefill and diff-style SchedulerOutputs, as the engine would build them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model_runner import ModelRunner
from actorexec.protocol import (
    CacheConfig,
    Config,
    ModelConfig,
    ModelRunnerOutput,
    NewRequestData,
    SamplingParams,
    SchedulerConfig,
    SchedulerOutput,
)
from actorexec.protocol.kv_cache import make_kv_cache_configs

GREEDY = SamplingParams(temperature=0.0)


def make_runner(path: Path | str, block_size: int = 4, num_blocks: int = 64,
                max_tokens: int = 256, max_seqs: int = 8, async_scheduling: bool = True,
                **model_kw: object) -> ModelRunner:
    """A world-size-1 runner with its model loaded and KV cache allocated."""
    config = Config(model=ModelConfig(model=str(path), **model_kw),
                    cache=CacheConfig(block_size=block_size, num_blocks_override=num_blocks),
                    scheduler=SchedulerConfig(max_num_batched_tokens=max_tokens,
                                              max_num_seqs=max_seqs,
                                              async_scheduling=async_scheduling))
    from actorexec.actors.model.hf_config import read_hf_config
    layers = read_hf_config(path).num_layers
    runner = ModelRunner(config, torch.device("cpu"), ParallelContext.single(layers))
    runner.load_model()
    specs = runner.get_kv_cache_spec()
    (kv,) = make_kv_cache_configs([specs], [runner.determine_available_memory()], num_blocks)
    runner.initialize_kv_cache(kv)
    return runner


@dataclass
class SimRequest:
    req_id: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    unsent: list[int] = field(default_factory=list)  # tokens gained since last scheduled
    slot: int | None = None  # the runner slot, once sent
    logprobs: list = field(default_factory=list)

    @property
    def all_tokens(self) -> list[int]:
        return self.prompt + self.output


class SimScheduler:
    """FCFS over running requests, ``token_budget`` tokens per step (chunked prefill
    when a prompt does not fit), blocks allocated from a free list as tokens need them."""

    def __init__(self, runner: ModelRunner | None, token_budget: int = 256,
                 blocks: list[int] | None = None, block_size: int | None = None,
                 slots: list[int] | None = None) -> None:
        """Drives ``runner`` directly, or (runner None) builds steps for an executor
        over the KV blocks ``blocks`` of ``block_size`` tokens and the runner slots
        ``slots`` (default: slots 0-7)."""
        self.runner = runner
        if slots is None:
            slots = list(range(runner.max_num_reqs if runner is not None else 8))
        self.free_slots = slots
        self.by_slot: dict[int, SimRequest] = {}
        if runner is not None:
            assert runner.kv_cache_config is not None
            blocks = list(range(runner.kv_cache_config.num_blocks))
            block_size = runner.block_size
        assert blocks is not None and block_size is not None
        self.free = list(blocks)
        self.block_size = block_size
        self.token_budget = token_budget
        self.running: dict[str, SimRequest] = {}
        self.done: dict[str, SimRequest] = {}
        self.finished_since_last: list[int] = []  # slots
        self.step_id = 0

    def add(self, req_id: str, prompt: list[int], params: SamplingParams = GREEDY,
            max_tokens: int = 8) -> None:
        self.running[req_id] = SimRequest(req_id, list(prompt), params, max_tokens)

    def schedule(self) -> SchedulerOutput:
        so = SchedulerOutput(step_id=self.step_id, finished_slots=self.finished_since_last)
        budget = self.token_budget
        for req in self.running.values():
            n = min(len(req.all_tokens) - req.num_computed, budget)
            if n <= 0:
                continue
            budget -= n
            need = -(-(req.num_computed + n) // self.block_size) - len(req.blocks)
            fresh = [self.free.pop(0) for _ in range(need)]
            req.blocks += fresh
            if req.slot is None:
                req.slot = self.free_slots.pop(0)
                self.by_slot[req.slot] = req
                so.add_new(NewRequestData(req_id=req.req_id, slot=req.slot,
                                          prompt_token_ids=req.prompt,
                                          sampling_params=req.params, block_ids=list(req.blocks),
                                          output_token_ids=list(req.output)), n)
            else:
                so.add_cached(req.slot, num_computed_tokens=req.num_computed,
                              num_scheduled_tokens=n, new_token_ids=req.unsent,
                              new_block_ids=fresh)
            req.unsent = []
        self.finished_since_last = []
        self.step_id += 1
        return so

    def update(self, so: SchedulerOutput, out: ModelRunnerOutput) -> None:
        for slot, n in so.num_scheduled_tokens.items():
            self.by_slot[slot].num_computed += n
        assert out.num_reqs == so.num_reqs
        for i, (slot, tokens) in enumerate(zip(so.slots, out.sampled_lists(), strict=True)):
            req = self.by_slot[slot]
            req.output += tokens
            req.unsent += tokens
            req.logprobs += out.logprobs.get(i, [])
            if len(req.output) >= req.max_tokens:
                self.free += req.blocks
                self.done[req.req_id] = self.running.pop(req.req_id)
                del self.by_slot[slot]
                self.free_slots.append(slot)
                self.finished_since_last.append(slot)

    def step(self) -> ModelRunnerOutput:
        assert self.runner is not None
        so = self.schedule()
        out = self.runner.execute_model(so)
        assert out is not None
        self.update(so, out)
        return out

    def admit(self, arrivals: dict[int, list[tuple[str, list[int], int]]], step: int) -> None:
        for req_id, prompt, max_tokens in arrivals.get(step, []):
            self.add(req_id, prompt, max_tokens=max_tokens)

    async def run_async(self, execute: Callable[[SchedulerOutput], Awaitable[ModelRunnerOutput]],
                        arrivals: dict[int, list[tuple[str, list[int], int]]],
                        max_steps: int = 200) -> dict[str, list[int]]:
        """As ``run``, with each step sent through ``execute`` (an executor's execute_model)."""
        for step in range(max_steps):
            self.admit(arrivals, step)
            if not self.running and step > max(arrivals, default=-1):
                break
            if self.running:
                so = self.schedule()
                self.update(so, await execute(so))
        if self.finished_since_last:  # the runners drop the last ones too: their slots are free
            await execute(self.schedule())
        return {r.req_id: r.output for r in self.done.values()}

    def run(self, arrivals: dict[int, list[tuple[str, list[int], int]]] | None = None,
            max_steps: int = 200) -> dict[str, list[int]]:
        """Steps until every request is done; ``arrivals[step]`` join before that step."""
        arrivals = arrivals or {}
        for step in range(max_steps):
            self.admit(arrivals, step)
            if not self.running and step > max(arrivals, default=-1):
                break
            if self.running:
                self.step()
        if self.finished_since_last:  # the runner drops the last ones too
            assert self.runner is not None
            self.runner.execute_model(self.schedule())
        return {r.req_id: r.output for r in self.done.values()}
