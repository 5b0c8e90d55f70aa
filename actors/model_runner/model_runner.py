"""The ModelRunner: persistent request state, inputs, forward over the paged cache, sampling.

Called by the Worker, blocking. One ``execute_model`` call: validate the
SchedulerOutput against the state (raising before any change), apply the
diff, build inputs, run this rank's pipeline stage (receiving / sending the
intermediates over the PP group), and on the last stage compute logits for
each request's last scheduled token only and sample on the output rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from actorexec.actors.model.hf_config import read_hf_config
from actorexec.actors.model.layers.attention import AttentionMetadata
from actorexec.actors.model.llama import IntermediateTensors, LlamaForCausalLM
from actorexec.actors.model.loader import load_model, resolve_dtype
from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model_runner.input_batch import InputBuffers, StepInputs
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.sampler import Sampler, SamplingMetadata
from actorexec.actors.model_runner.step_reader import (
    RunnerLimits,
    StepPlan,
    apply_step,
    read_step,
)
from actorexec.protocol.config import Config
from actorexec.protocol.errors import ConfigError
from actorexec.protocol.kv_cache import KVCacheConfig, KVCacheSpec
from actorexec.protocol.outputs import ModelRunnerOutput, TokenLogprobs
from actorexec.protocol.scheduler_output import SchedulerOutput

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class ModelRunner:
    """Runs one rank's share of the model for each SchedulerOutput.

    Keeps per-request state across steps so a step carries only its diff;
    owns the KV cache tensors and binds them to the model's attention layers.
    """

    def __init__(self, config: Config, device: torch.device, parallel: ParallelContext) -> None:
        self.config, self.device, self.parallel = config, device, parallel
        self.hf_config = read_hf_config(config.model.model)
        self.dtype = resolve_dtype(config.model.dtype, self.hf_config, device)
        self.max_model_len = config.model.max_model_len or self.hf_config.max_position_embeddings
        self.block_size = config.cache.block_size
        self.max_num_tokens = config.scheduler.max_num_batched_tokens
        self.max_num_reqs = config.scheduler.max_num_seqs
        self.model: LlamaForCausalLM | None = None
        self.kv_caches: dict[str, torch.Tensor] = {}
        self.kv_cache_config: KVCacheConfig | None = None
        self.requests: dict[str, CachedRequestState] = {}
        self.buffers = InputBuffers(self.max_num_tokens, self.max_num_reqs,
                                    -(-self.max_model_len // self.block_size), self.block_size,
                                    device)
        gen = torch.Generator(device=device).manual_seed(config.model.seed)
        self.sampler = Sampler(gen)
        # PP sends in flight: (work, tensors kept alive until the peer has them).
        self._inflight_sends: list[tuple[dist.Work, tuple[torch.Tensor, ...]]] = []

    # ---- set-up -------------------------------------------------------------------------
    def load_model(self) -> None:
        torch.manual_seed(self.config.model.seed)
        self.model = load_model(self.hf_config, self.config.model.model, self.parallel,
                                self.dtype, self.device, self.config.model.load_format,
                                self.config.model.seed)

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
        ``gpu_memory_utilization`` of the device minus the peak of a max-size batch."""
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
        return max(0, int(self.config.cache.gpu_memory_utilization * total) - peak - non_torch)

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

    def compile_or_warm_up_model(self) -> None:
        """Eager only for now: one dummy batch to touch every kernel (CUDA graphs: later)."""
        self.execute_dummy_batch()

    # ---- steps --------------------------------------------------------------------------
    def _limits(self) -> RunnerLimits:
        if self.kv_cache_config is None:
            raise RuntimeError("initialize_kv_cache() has not run")
        return RunnerLimits(vocab_size=self.hf_config.vocab_size,
                            num_blocks=self.kv_cache_config.num_blocks,
                            block_size=self.block_size, max_model_len=self.max_model_len,
                            max_num_reqs=self.max_num_reqs, max_num_tokens=self.max_num_tokens)

    def _apply_diff(self, plan: StepPlan) -> None:
        apply_step(plan, self.requests, self.device)

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """One step; returns the output on the output rank, None on the others."""
        so = scheduler_output
        plan = read_step(so, self.requests, self._limits())  # raises before any change
        self._apply_diff(plan)
        order = plan.req_ids
        if not order:
            return ModelRunnerOutput(step_id=so.step_id) if self.parallel.is_output_rank else None
        inputs = self.buffers.prepare(order, self.requests, so.num_scheduled_tokens)
        hidden = self._forward(inputs.input_ids, inputs.positions, inputs.meta)
        if hidden is None:
            return None
        logits = self._model().compute_logits(hidden[inputs.logits_indices])  # [R, V]
        if not self.parallel.is_output_rank:
            return None
        return self._sample(so.step_id, inputs, logits)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                 meta: AttentionMetadata) -> torch.Tensor | None:
        """This stage's layers; PP intermediates go point-to-point. None off the last stage."""
        p, model = self.parallel, self._model()
        intermediate = None
        if not p.is_first_stage:
            shape = (input_ids.shape[0], self.hf_config.hidden_size)
            hidden = torch.empty(shape, dtype=self.dtype, device=self.device)
            residual = torch.empty_like(hidden)
            for work in (dist.irecv(hidden, p.prev_rank, group=p.pp_group),
                         dist.irecv(residual, p.prev_rank, group=p.pp_group)):
                work.wait()
            intermediate = IntermediateTensors(hidden, residual)
        out = model(input_ids if p.is_first_stage else None, positions, meta, intermediate)
        if isinstance(out, IntermediateTensors):
            self._send_intermediate(out)
            return None
        return out

    # A stage never waits on its successor: sends complete in the background while this
    # stage takes the next batch. Bounded, so a stalled successor cannot make a stage
    # queue unbounded activations (one [tokens, hidden] pair per batch in flight).
    _MAX_INFLIGHT_SENDS = 8

    def _send_intermediate(self, out: IntermediateTensors) -> None:
        p = self.parallel
        self._inflight_sends = [(w, t) for w, t in self._inflight_sends if not w.is_completed()]
        while len(self._inflight_sends) >= self._MAX_INFLIGHT_SENDS:
            work, _ = self._inflight_sends.pop(0)
            work.wait()
        tensors = (out.hidden.contiguous(), out.residual.contiguous())
        # Ordered per pair of ranks, so the next stage's irecvs match these sends.
        for tensor in tensors:
            work = dist.isend(tensor, p.next_rank, group=p.pp_group)
            assert work is not None
            self._inflight_sends.append((work, tensors))

    def _sample(self, step_id: int, inputs: StepInputs, logits: torch.Tensor
                ) -> ModelRunnerOutput:
        rows = [i for i, s in enumerate(inputs.samples) if s]
        sampled: list[list[int]] = [[] for _ in inputs.req_ids]
        logprobs: dict[str, list[TokenLogprobs]] = {}
        if rows:
            states = [self.requests[inputs.req_ids[i]] for i in rows]
            md = SamplingMetadata.from_states(states, self.hf_config.vocab_size, self.device)
            tokens, lps = self.sampler(logits[rows], md)
            for j, i in enumerate(rows):
                sampled[i] = [tokens[j]]
                if lps[j] is not None:
                    logprobs[inputs.req_ids[i]] = lps[j]
        return ModelRunnerOutput(step_id=step_id, req_ids=inputs.req_ids,
                                 sampled_token_ids=sampled, logprobs=logprobs)

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
        hidden = self._forward(ids, pos, meta)
        if hidden is not None:
            self._model().compute_logits(hidden[-1:])

    def execute_dummy_batch(self) -> None:
        """One token through every stage, touching no request state or KV slot."""
        self._run_dummy(1)

    # ---- sleep mode ---------------------------------------------------------------------
    def sleep(self, level: int) -> None:
        """Level 1: drop the KV cache (contents lost; weights to CPU on CUDA).
        Level 2: drop the weights too; ``wake_up`` reloads them from the checkpoint."""
        for attn in self._model().attention_layers().values():
            attn.kv_cache = None
        self.kv_caches = {}
        self.requests.clear()  # their KV contents are gone
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
