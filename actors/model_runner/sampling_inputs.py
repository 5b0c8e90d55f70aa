"""A step's ``SamplingTensors``, gathered on the device from the persistent request rows.

Only the flags and the min_tokens bans come from the host (they are known
there, from the requests' parameters and output counts); every per-row value
is an ``index_select`` of ``RequestRows``' columns, so building them costs a
few small kernels and no host synchronisation.
"""

from __future__ import annotations

import torch

from actorexec.actors.model.hf_config import HFModelConfig
from actorexec.actors.model_runner.device_state import RequestRows, upload_ints
from actorexec.actors.model_runner.input_batch import StepInputs
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.sampler import SamplingTensors, banned_ids


def gather_sampling_tensors(rows: RequestRows, inputs: StepInputs,
                            states: list[CachedRequestState], hf_config: HFModelConfig,
                            copy_stream: torch.cuda.Stream | None) -> SamplingTensors | None:
    """Tensors for the step's requests (in step order); None when a plain argmax is the
    whole answer (all greedy: no penalties, logprobs or min_tokens bans)."""
    params = [s.sampling_params for s in states]
    banned = [banned_ids(p, s.num_output_tokens, hf_config.eos_token_ids)
              for p, s in zip(params, states, strict=True)]
    any_penalty = any(p.repetition_penalty != 1.0 or p.presence_penalty
                      or p.frequency_penalty for p in params)
    logprobs = [p.logprobs for p in params if p.logprobs is not None]
    all_greedy = all(p.temperature == 0 for p in params)
    if all_greedy and not any_penalty and not logprobs and not any(banned):
        return None
    device, idx = rows.device, inputs.rows
    floats = rows.float_params.index_select(1, idx)        # [6, R]
    ints = rows.int_params.index_select(1, idx)            # [4, R]: top_k, seed, seeded, prompt
    seq_lens = inputs.meta.seq_lens[: len(states)]
    history = prompt_lens = None
    if any_penalty:
        width = max(s.num_tokens for s in states)
        table = rows.token_ids.index_select(0, idx)[:, :width].long()          # [R, L]
        live = torch.arange(width, device=device)[None, :] < seq_lens[:, None]
        history, prompt_lens = torch.where(live, table, -1), ints[3]
    bans = None
    if any(banned):
        width = max(len(b) for b in banned)
        flat = [t for b in banned for t in b + [-1] * (width - len(b))]
        bans = upload_ints(flat, device, copy_stream).view(len(banned), width)
    vocab = hf_config.vocab_size
    return SamplingTensors(
        temperature=floats[0], top_p=floats[1], min_p=floats[2],
        repetition_penalty=floats[3], presence_penalty=floats[4], frequency_penalty=floats[5],
        top_k=ints[0], seeds=ints[1], seeded=ints[2].bool(), positions=seq_lens.long(),
        token_history=history, prompt_lens=prompt_lens, banned_token_ids=bans,
        all_greedy=all_greedy,
        any_seeded=any(p.seed is not None and p.temperature > 0 for p in params),
        any_penalty=any_penalty, any_top_k=any(0 < (p.top_k or 0) < vocab for p in params),
        any_top_p=any(p.top_p < 1 for p in params), any_min_p=any(p.min_p > 0 for p in params),
        max_num_logprobs=max(logprobs) if logprobs else None)
