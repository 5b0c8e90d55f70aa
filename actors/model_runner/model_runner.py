"""The ModelRunner: persistent request state, inputs, forward over the paged cache, sampling.

Called by the Worker, blocking. One ``execute_model`` call: validate the
SchedulerOutput against the state (raising before any change), apply the
diff (host records plus the device rows of ``RequestRows``), build inputs on
the device, run this rank's pipeline stage — a CUDA graph replay for decode
steps that fit a captured size, else eagerly — and on the output rank sample
and queue the sampled ids' copy to the host.

On CUDA everything runs on the runner's own compute stream; inputs come from
pinned buffers over a copy stream and sampled ids leave over a side stream,
ordered by events. ``execute_model_async`` returns as soon as the step is
queued (a ``PendingOutput``), so the caller can prepare the next step while
the GPU works; ``execute_model`` waits for the values.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from actorexec.actors.model.hf_config import read_hf_config, resolve_max_model_len
from actorexec.actors.model.layers.attention import AttentionMetadata
from actorexec.actors.model.llama import IntermediateTensors, LlamaForCausalLM
from actorexec.actors.model.loader import load_model, resolve_dtype
from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model_runner.cuda_graphs import DecodeGraphs, default_buckets
from actorexec.actors.model_runner.device_state import RequestRows
from actorexec.actors.model_runner.input_batch import InputBuffers, StepInputs
from actorexec.actors.model_runner.phase_clock import PhaseClock
from actorexec.actors.model_runner.pipeline import StageLink
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.sampler import Sampler, SamplerOutput
from actorexec.actors.model_runner.sampling_inputs import gather_sampling_tensors
from actorexec.actors.model_runner.stage_forward import StageForward
from actorexec.actors.model_runner.step_events import StepEvents
from actorexec.actors.model_runner.step_output import PendingOutput, copy_to_host
from actorexec.actors.model_runner.step_plan import RunnerLimits, StepPlan
from actorexec.actors.model_runner.step_reader import apply_step, read_step
from actorexec.actors.model_runner.token_feedback import TokenFeedback
from actorexec.protocol.config import Config
from actorexec.protocol.errors import ConfigError, InvalidRequestError
from actorexec.protocol.kv_cache import KVCacheConfig, KVCacheSpec
from actorexec.protocol.outputs import ModelRunnerOutput, TokenLogprobs
from actorexec.protocol.scheduler_output import SchedulerOutput

logger = logging.getLogger("actorexec.model_runner")
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# Memory kept back for the decode graphs' pool when sizing the KV cache (their
# activations and logits; the measured figure is logged after capture).
GRAPH_MEMORY_RESERVE = 1 << 30


class ModelRunner:
    """Runs one rank's share of the model for each SchedulerOutput.

    Keeps per-request state across steps so a step carries only its diff;
    owns the KV cache tensors and binds them to the model's attention layers.
    """

    def __init__(self, config: Config, device: torch.device, parallel: ParallelContext) -> None:
        self.config, self.device, self.parallel = config, device, parallel
        self.hf_config = read_hf_config(config.model.model)
        self.dtype = resolve_dtype(config.model.dtype, self.hf_config, device)
        self.max_model_len = resolve_max_model_len(self.hf_config, config.model.max_model_len)
        self.block_size = config.cache.block_size
        self.max_num_tokens = config.scheduler.max_num_batched_tokens
        self.max_num_reqs = config.scheduler.max_num_seqs
        self.model: LlamaForCausalLM | None = None
        self.kv_caches: dict[str, torch.Tensor] = {}
        self.kv_cache_config: KVCacheConfig | None = None
        self.requests: dict[str, CachedRequestState] = {}
        # Slot -> the request in it (steps name cached requests by slot, protocol/
        # scheduler_output.py); kept by apply_step alongside ``requests``.
        self.slots: list[CachedRequestState | None] = [None] * self.max_num_reqs
        self.rows = RequestRows(self.max_num_reqs, self.max_model_len,
                                -(-self.max_model_len // self.block_size), device)
        self.buffers = InputBuffers(self.max_num_tokens, self.max_num_reqs, self.rows,
                                    self.block_size, device)
        gen = torch.Generator(device=device).manual_seed(config.model.seed)
        self.sampler = Sampler(gen)
        self.link = StageLink(parallel, self.hf_config.hidden_size, self.dtype, device)
        cuda = device.type == "cuda"
        # The runner's own streams (DESIGN: compute; host->device copies; device->host).
        self.compute_stream = torch.cuda.Stream(device) if cuda else None
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.d2h_stream = torch.cuda.Stream(device) if cuda else None
        self.stage = StageForward(self._model, parallel, self.buffers, self.link,
                                  self.max_model_len)
        # Async scheduling: sampled tokens reach the next step's inputs on the device.
        self.feedback = TokenFeedback(parallel, self.rows, device, self.copy_stream,
                                      enabled=config.scheduler.async_scheduling)
        self.phase_clock = PhaseClock(enabled=os.environ.get("ACTOREXEC_PHASE_TIMES") == "1")
        self.step_events = StepEvents(device)  # GPU idle between steps (benchmarks; opt-in)

    @property
    def use_cuda_graphs(self) -> bool:
        """Decode graphs: on CUDA unless enforce_eager, in every TP/PP layout
        (stage_forward.py says how collectives and P2P fit around them)."""
        return self.device.type == "cuda" and not self.config.model.enforce_eager

    @property
    def graphs(self) -> DecodeGraphs | None:
        return self.stage.graphs

    @contextlib.contextmanager
    def _on_compute_stream(self) -> Iterator[None]:
        if self.compute_stream is None:
            yield
        else:
            with torch.cuda.stream(self.compute_stream):
                yield

    # ---- set-up -------------------------------------------------------------------------
    def load_model(self) -> None:
        torch.manual_seed(self.config.model.seed)
        self.model = load_model(self.hf_config, self.config.model.model, self.parallel,
                                self.dtype, self.device, self.config.model.load_format,
                                self.config.model.seed)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # weights written on the default stream

    def _model(self) -> LlamaForCausalLM:
        if self.model is None:
            raise RuntimeError("ModelRunner.load_model() has not run (or weights are asleep)")
        return self.model

    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        """One spec per attention layer this rank holds (its pipeline stage only)."""
        return {name: KVCacheSpec(block_size=self.block_size, num_kv_heads=attn.num_kv_heads,
                                  head_size=attn.head_dim, dtype=DTYPE_NAMES[self.dtype])
                for name, attn in self._model().attention_layers().items()}

    def determine_available_memory(self) -> int:
        """Bytes this rank may spend on KV: a fixed budget on the CPU; on CUDA,
        ``gpu_memory_utilization`` of the device minus the peak of a max-size batch
        and what the decode graphs will hold."""
        if self.device.type != "cuda":
            return self.config.cache.cpu_kv_cache_bytes
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._run_dummy(self.max_num_tokens)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        # Memory held outside torch's allocator (other processes, NCCL) also counts.
        non_torch = total - free - torch.cuda.memory_reserved(self.device)
        graphs = GRAPH_MEMORY_RESERVE if self.use_cuda_graphs else 0
        return max(0, int(self.config.cache.gpu_memory_utilization * total) - peak - non_torch
                   - graphs)

    def initialize_kv_cache(self, kv_cache_config: KVCacheConfig) -> None:
        """Allocates ``[2, num_blocks, block_size, kv_heads, head_dim]`` per layer and binds it."""
        layers = self._model().attention_layers()
        self.kv_caches = {}
        for group in kv_cache_config.kv_cache_groups:
            spec = group.kv_cache_spec
            for name in group.layer_names:
                if name not in layers:
                    raise ConfigError(f"KV cache config names layer {name!r}, not on this rank")
                cache = torch.zeros(2, kv_cache_config.num_blocks, spec.block_size,
                                    spec.num_kv_heads, spec.head_size, dtype=self.dtype,
                                    device=self.device)
                self.kv_caches[name] = cache
                layers[name].kv_cache = cache
        self.kv_cache_config = kv_cache_config
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def compile_or_warm_up_model(self) -> None:
        """One dummy batch through every stage, then (CUDA) the decode graphs."""
        self.execute_dummy_batch()
        if self.use_cuda_graphs:
            self.capture_decode_graphs()

    def capture_decode_graphs(self, sizes: list[int] | None = None) -> None:
        assert self.compute_stream is not None
        sizes = sizes or [b for b in default_buckets(self.max_num_reqs)
                          if b <= self.max_num_tokens]
        self.stage.capture(sizes, self.compute_stream)

    # ---- steps --------------------------------------------------------------------------
    def _limits(self) -> RunnerLimits:
        if self.kv_cache_config is None:
            raise RuntimeError("initialize_kv_cache() has not run")
        return RunnerLimits(vocab_size=self.hf_config.vocab_size,
                            num_blocks=self.kv_cache_config.num_blocks,
                            block_size=self.block_size, max_model_len=self.max_model_len,
                            max_num_reqs=self.max_num_reqs, max_num_tokens=self.max_num_tokens,
                            accepts_device_tokens=self.feedback.enabled)

    def _apply_diff(self, plan: StepPlan) -> None:
        """Host records (``apply_step``) and queued device-row writes (flushed before the
        forward). The row budget is checked first, so a refused step changes nothing."""
        rows = self.rows
        gone = [r for r in plan.finished_req_ids if r in self.requests]
        added = sum(1 for rec in plan.requests if rec.is_new)
        if len(self.requests) - len(gone) + added > rows.max_reqs:
            raise InvalidRequestError(
                f"step would leave {len(self.requests) - len(gone) + added} live requests; the "
                f"runner holds at most max_num_seqs={rows.max_reqs}")
        before = {rec.req_id: (self.requests[rec.req_id].num_tokens,
                               len(self.requests[rec.req_id].block_ids))
                  for rec in plan.requests if not rec.is_new}
        apply_step(plan, self.requests, self.slots, self.device)
        for req_id in gone:
            rows.remove(req_id)
        for rec in plan.requests:
            if rec.new is not None:
                state = self.requests[rec.req_id]
                row = rows.add(rec.req_id, rec.new.sampling_params,
                               len(state.prompt_token_ids))
                rows.write_tokens(row, 0, state.prompt_token_ids + state.output_token_ids)
                rows.write_blocks(row, 0, state.block_ids)
            else:
                row = rows.row_of[rec.req_id]
                num_tokens, num_blocks = before[rec.req_id]
                rows.write_tokens(row, num_tokens, rec.new_token_ids)
                rows.write_blocks(row, num_blocks, rec.new_block_ids)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """One step; returns the output on the output rank, None on the others."""
        pending = self.execute_model_async(scheduler_output)
        if pending is None:
            return None
        pending.wait()
        self.phase_clock.mark("gpu_wait")
        output = pending.result()
        self.phase_clock.mark("result")
        return output

    @torch.inference_mode()
    def execute_model_async(self, scheduler_output: SchedulerOutput) -> PendingOutput | None:
        """Queues one step on the device; the output rank gets a PendingOutput back."""
        so, clock = scheduler_output, self.phase_clock
        clock.start()
        plan = read_step(so, self.requests, self.slots, self._limits())  # raises, or no change
        clock.mark("read_step")
        with self._on_compute_stream():
            self.step_events.start()
            try:
                return self._queue_step(so, plan)
            finally:
                self.step_events.end()

    def _queue_step(self, so: SchedulerOutput, plan: StepPlan) -> PendingOutput | None:
        """The body of ``execute_model_async``, on the compute stream, once ``plan`` is valid."""
        clock = self.phase_clock
        # Earlier steps' sampled ids that this step reads, or whose rows it frees (PP),
        # land before any of its own writes.
        self.feedback.take_in(plan)
        self._apply_diff(plan)
        # Sampling columns of new requests now; token/block writes go with the inputs.
        self.rows.flush(self.copy_stream, writes=False)
        clock.mark("apply_flush")
        order = plan.req_ids
        if not order:
            self.rows.flush(self.copy_stream)
            return (PendingOutput.ready(ModelRunnerOutput(step_id=so.step_id))
                    if self.parallel.is_output_rank else None)
        states = [self.requests[r] for r in order]
        counts = [rec.num_scheduled_tokens for rec in plan.requests]
        bucket = self.stage.bucket_for(len(order), sum(counts) == len(order))
        inputs = self.buffers.prepare(order, [s.num_computed_tokens for s in states], counts,
                                      [s.num_tokens for s in states], self.copy_stream,
                                      pad_to=bucket)
        clock.mark("prepare")
        out = self.stage.run(inputs, bucket)
        clock.mark("forward_launch")
        if out is None:  # not the last stage: its activations are on their way
            self.feedback.expect(so.step_id, inputs)
            return None
        logits, greedy = out
        if not self.parallel.is_output_rank:
            self.feedback.sampled(inputs, None)
            return None
        pending, sampled = self._sample(so.step_id, inputs, logits, greedy)
        self.feedback.sampled(inputs, sampled)
        clock.mark("sample_launch")
        return pending

    def _sample(self, step_id: int, inputs: StepInputs, logits: torch.Tensor,
                greedy: torch.Tensor | None = None
                ) -> tuple[PendingOutput, torch.Tensor | None]:
        """Samples every row on the device (no host sync); ids (and logprobs) go to pinned
        host memory on the side stream. Rows still mid-prefill are sampled but not reported.
        Also returns the sampled ids [R] (a tensor no later step overwrites), or None when
        no row samples."""
        rows = [i for i, s in enumerate(inputs.samples) if s]
        if not rows:
            return PendingOutput.ready(ModelRunnerOutput.from_lists(
                step_id, [[] for _ in inputs.req_ids])), None
        states = [self.requests[r] for r in inputs.req_ids]
        tensors = gather_sampling_tensors(self.rows, inputs, states, self.hf_config,
                                          self.copy_stream)
        if tensors is None:  # all greedy, nothing else asked: the argmax (in the graph if any)
            # The graph's argmax is a static buffer the next replay overwrites: copy it
            # before the device->host copy and the token feedback read it.
            tokens = greedy.clone() if greedy is not None else logits.argmax(-1)
            host, event = copy_to_host([tokens], self.d2h_stream)
            return PendingOutput(step_id, len(inputs.req_ids), rows, host[0], event), tokens
        out = self.sampler.sample(logits, tensors)
        if out.logprobs is None:
            host, event = copy_to_host([out.sampled], self.d2h_stream)
            return PendingOutput(step_id, len(inputs.req_ids), rows, host[0], event), out.sampled
        assert out.logprob_token_ids is not None and out.sampled_ranks is not None
        host, event = copy_to_host([out.sampled, out.logprob_token_ids, out.logprobs,
                                    out.sampled_ranks], self.d2h_stream)
        wanted = [s.sampling_params.logprobs for s in states]

        def logprobs() -> dict[int, list[TokenLogprobs]]:
            lists = SamplerOutput(*host).to_lists(wanted)[1]
            return {i: lists[i] for i in rows if lists[i] is not None}

        return (PendingOutput(step_id, len(inputs.req_ids), rows, host[0], event, logprobs),
                out.sampled)

    @torch.inference_mode()
    def _run_dummy(self, num_tokens: int) -> None:
        """A forward of ``num_tokens`` tokens that reads and writes no KV cache."""
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        pos = torch.arange(num_tokens, device=self.device) % self.max_model_len
        zeros = torch.zeros(1, dtype=torch.int64, device=self.device)
        meta = AttentionMetadata(
            slot_mapping=ids, block_table=zeros.view(1, 1), seq_lens=zeros + num_tokens,
            query_lens=zeros + num_tokens, token_req=ids, token_q=pos, max_query_len=num_tokens,
            max_seq_len=num_tokens, use_cache=False)
        p, model = self.parallel, self._model()
        with self._on_compute_stream():
            intermediate = None if p.is_first_stage else self.link.recv(num_tokens)
            out = model(ids if p.is_first_stage else None, pos, meta, intermediate)
            if isinstance(out, IntermediateTensors):
                self.link.send(out)
            else:
                model.compute_logits(out[-1:])
        if self.compute_stream is not None:
            self.compute_stream.synchronize()

    def execute_dummy_batch(self) -> None:
        """One token through every stage, touching no request state or KV slot."""
        self._run_dummy(1)

    def drop_graphs(self) -> None:
        """Before the process group goes: destroying NCCL communicators that CUDA graphs
        captured can hang (pytorch/pytorch#115388), so the graphs go first, and the
        device is let go idle."""
        self.stage.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- sleep mode ---------------------------------------------------------------------
    def sleep(self, level: int) -> None:
        """Level 1: drop the KV cache (contents lost; weights to CPU on CUDA).
        Level 2: drop the weights too; ``wake_up`` reloads them from the checkpoint."""
        self.stage.clear()  # the graphs point at the dropped cache and weights
        self.link.drain()
        for attn in self._model().attention_layers().values():
            attn.kv_cache = None
        self.kv_caches = {}
        self.feedback.drain()  # ids still travelling land before the rows are cleared
        self.requests.clear()  # their KV contents are gone
        self.slots[:] = [None] * self.max_num_reqs
        self.rows.clear()
        if level >= 2:
            self.model = None
        elif self.device.type == "cuda":
            self._model().to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restores ``"weights"`` and/or ``"kv_cache"`` (both when ``tags`` is None)."""
        tags = ["weights", "kv_cache"] if tags is None else tags
        if "weights" in tags:
            if self.model is None:
                self.load_model()
            else:
                self.model.to(self.device)
        if "kv_cache" in tags and self.kv_cache_config is not None and not self.kv_caches:
            self.initialize_kv_cache(self.kv_cache_config)
        if self.model is not None and self.kv_caches and self.use_cuda_graphs \
                and self.graphs is None:
            self.capture_decode_graphs()
