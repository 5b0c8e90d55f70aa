"""This rank's forward for one step: its pipeline stage's layers, eagerly or as a captured
decode graph, with the stage-to-stage hand-off around it.

Graphs are captured on every rank of every layout (TP and PP included):

- **TP > 1**: the row-parallel all-reduces (and the logits all-gather) are
  captured inside the graph. NCCL can be captured once its communicator
  exists, which the warm-up batch before capture ensures; capture runs in
  ``thread_local`` mode so other threads' CUDA calls (NCCL's watchdog, the
  output waiter) cannot invalidate it. Every TP rank of a stage captures the
  same sizes in the same order, so their collectives pair up.
- **PP > 1**: P2P stays outside the graph. A later stage receives into static
  input buffers (``[max_bucket, hidden]`` each for hidden and residual) and
  then replays; an earlier stage sends *copies* of its graph's static outputs
  (the next replay would overwrite them while the send may still read them; a
  copy of ``[bucket, hidden]`` x2 costs ~1 us, waiting for the send would stall
  the next batch). Stages pick graph or eager from the same step, so sender and
  receiver agree on the padded row count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from actorexec.actors.model.layers.attention import AttentionMetadata
from actorexec.actors.model.llama import IntermediateTensors, LlamaForCausalLM
from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model_runner.cuda_graphs import DecodeGraphs
from actorexec.actors.model_runner.input_batch import InputBuffers, StepInputs
from actorexec.actors.model_runner.pipeline import StageLink

# (logits [R, V] float32, their argmax [R] or None): what the last stage hands the sampler.
StageLogits = tuple[torch.Tensor, torch.Tensor | None]


class StageForward:
    """Runs a step through this rank's stage; owns the decode graphs and their static inputs."""

    def __init__(self, model: Callable[[], LlamaForCausalLM], parallel: ParallelContext,
                 buffers: InputBuffers, link: StageLink, max_model_len: int) -> None:
        self.model, self.parallel, self.buffers, self.link = model, parallel, buffers, link
        self.max_model_len = max_model_len
        self.graphs: DecodeGraphs | None = None
        self.stage_inputs: IntermediateTensors | None = None  # static; later stages only

    # ---- graphs -----------------------------------------------------------------------
    def capture(self, sizes: list[int], stream: torch.cuda.Stream) -> None:
        """One decode graph per size (every rank of the layout, see the module docstring)."""
        if not self.parallel.is_first_stage:
            link = self.link
            hidden = torch.zeros(max(sizes), link.hidden_size, dtype=link.dtype,
                                 device=link.device)
            self.stage_inputs = IntermediateTensors(hidden, torch.zeros_like(hidden))
        graphs = DecodeGraphs(self._graph_body, self.link.device)
        mode = "thread_local" if self.parallel.world_size > 1 else "global"
        with torch.inference_mode():
            graphs.capture(sizes, self._pad_only, stream, capture_error_mode=mode)
        self.graphs = graphs

    def clear(self) -> None:
        """Drops the graphs (they point at the KV cache and weights being dropped)."""
        if self.graphs is not None:
            self.graphs.clear()
        self.graphs = None
        self.stage_inputs = None

    def bucket_for(self, num_reqs: int, is_decode: bool) -> int | None:
        """The graph size a step of ``num_reqs`` requests replays, or None (eager)."""
        if not is_decode or self.graphs is None:
            return None
        return self.graphs.bucket_for(num_reqs)

    def _pad_only(self, size: int) -> None:
        self.buffers.pad_only(size)
        if self.stage_inputs is not None:
            self.stage_inputs.hidden[:size].zero_()
            self.stage_inputs.residual[:size].zero_()

    def _graph_body(self, size: int) -> IntermediateTensors | tuple[torch.Tensor, torch.Tensor]:
        """What is captured: this stage over the first ``size`` static rows -> its
        activations, or (last stage) logits [size, V] and their argmax [size] (greedy steps
        then need no kernel of their own after the replay)."""
        b, model = self.buffers, self.model()
        meta = AttentionMetadata(
            slot_mapping=b.slot_mapping[:size], block_table=b.block_table[:size],
            seq_lens=b.seq_lens[:size], query_lens=b.query_lens[:size],
            token_req=b.token_req[:size], token_q=b.token_q[:size], max_query_len=1,
            max_seq_len=self.max_model_len, query_start_loc=b.query_start_loc[: size + 1],
            is_decode=True)
        intermediate = None
        if self.stage_inputs is not None:
            intermediate = IntermediateTensors(self.stage_inputs.hidden[:size],
                                               self.stage_inputs.residual[:size])
        ids = b.input_ids[:size] if self.parallel.is_first_stage else None
        out = model(ids, b.positions[:size], meta, intermediate)
        if isinstance(out, IntermediateTensors):
            return out
        logits = model.compute_logits(out)
        return logits, logits.argmax(-1)

    # ---- one step ---------------------------------------------------------------------
    def run(self, inputs: StepInputs, bucket: int | None) -> StageLogits | None:
        """The step's logits on the last stage (one row per request); None elsewhere, once
        this stage's activations are on their way to the next."""
        return self._replay(inputs, bucket) if bucket is not None else self._eager(inputs)

    def _eager(self, inputs: StepInputs) -> StageLogits | None:
        p, model = self.parallel, self.model()
        intermediate = None if p.is_first_stage else self.link.recv(inputs.num_tokens)
        out = model(inputs.input_ids if p.is_first_stage else None, inputs.positions,
                    inputs.meta, intermediate)
        if isinstance(out, IntermediateTensors):
            self.link.send(out)
            return None
        return model.compute_logits(out[inputs.logits_indices]), None  # [R, V]

    def _replay(self, inputs: StepInputs, bucket: int) -> StageLogits | None:
        assert self.graphs is not None
        if self.stage_inputs is not None:  # padded rows too: the sender sends the bucket
            self.link.recv(bucket, into=IntermediateTensors(self.stage_inputs.hidden[:bucket],
                                                            self.stage_inputs.residual[:bucket]))
        out = self.graphs.replay(bucket)
        if isinstance(out, IntermediateTensors):
            self.link.send(IntermediateTensors(out.hidden.clone(), out.residual.clone()))
            return None
        logits, greedy = out
        num_reqs = len(inputs.req_ids)
        return logits[:num_reqs], greedy[:num_reqs]  # [R, V], [R]
