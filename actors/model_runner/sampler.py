"""Turns last-token logits into tokens on the device, with no host synchronisation.

Order (as vLLM v1): logprobs of the raw distribution; penalties; min_tokens
bans; then greedy argmax, or temperature -> min-p -> top-k -> top-p ->
sample. Sampling is an exponential race (argmax of probs / Exp(1) noise). A
row with a seed draws its noise from a counter-based hash of (seed, position
of the token being sampled, token id), so it gets the same tokens alone, in
any batch and after a restart, with no generator state; other rows share the
runner's device generator. Everything stays on the device until the caller's
one device-to-host copy of ``SamplerOutput``; host-known flags skip the work
no row needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from actorexec.actors.model_runner import sampler_ops as ops
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.protocol.outputs import TokenLogprobs
from actorexec.protocol.sampling import SamplingParams


@dataclass
class SamplingTensors:
    """One step's sampling parameters, one row per sampled request, on the logits' device.

    The runner keeps these as persistent per-request rows and passes views; the
    flags are derived on the host from the requests' ``SamplingParams`` (never
    read back from the device) and let the sampler skip unused stages.
    """

    temperature: torch.Tensor        # [R] float32; 0 = greedy
    top_k: torch.Tensor              # [R] int32/int64; <= 0 or >= vocab = all tokens
    top_p: torch.Tensor              # [R] float32; 1.0 = all tokens
    min_p: torch.Tensor              # [R] float32; 0.0 = off
    repetition_penalty: torch.Tensor  # [R] float32; 1.0 = off
    presence_penalty: torch.Tensor   # [R] float32; 0.0 = off
    frequency_penalty: torch.Tensor  # [R] float32; 0.0 = off
    seeds: torch.Tensor              # [R] int64; read only where ``seeded``
    seeded: torch.Tensor             # [R] bool
    positions: torch.Tensor          # [R] int64: sequence index of the token being sampled
    #   (= prompt + output tokens so far = the row's seq_len after this step)
    token_history: torch.Tensor | None = None     # [R, L] int64 prompt + output ids; only
    #   entries before positions[r] count (the rest may hold anything; -1 also skipped)
    prompt_lens: torch.Tensor | None = None       # [R] int64 (with token_history)
    banned_token_ids: torch.Tensor | None = None  # [R, B] int64, -1 pad (min_tokens)
    all_greedy: bool = False
    any_seeded: bool = False
    any_penalty: bool = False        # needs token_history and prompt_lens
    any_top_k: bool = False
    any_top_p: bool = False
    any_min_p: bool = False
    max_num_logprobs: int | None = None  # None: no logprobs; n: sampled + top n


@dataclass
class SamplerOutput:
    """Device tensors; the caller copies them to the host once (rows in input order)."""

    sampled: torch.Tensor                     # [R] int64
    logprob_token_ids: torch.Tensor | None    # [R, 1 + n] int64: sampled id, then top n
    logprobs: torch.Tensor | None             # [R, 1 + n] float32, same order
    sampled_ranks: torch.Tensor | None        # [R] int64, 1-based

    def to_lists(self, num_logprobs: list[int | None]
                 ) -> tuple[list[int], list[list[TokenLogprobs] | None]]:
        """Host lists for ``ModelRunnerOutput`` (row i keeps 1 + num_logprobs[i] entries).

        Call on a host copy; on device tensors ``tolist`` synchronises.
        """
        tokens = self.sampled.tolist()
        out: list[list[TokenLogprobs] | None] = [None] * len(tokens)
        if self.logprob_token_ids is None or self.logprobs is None or self.sampled_ranks is None:
            return tokens, out
        ids, lps, ranks = (self.logprob_token_ids.tolist(), self.logprobs.tolist(),
                           self.sampled_ranks.tolist())
        for i, n in enumerate(num_logprobs):
            if n is not None:
                out[i] = [TokenLogprobs(token_ids=ids[i][:1 + n], logprobs=lps[i][:1 + n],
                                        sampled_rank=ranks[i])]
        return tokens, out


def sampling_probs(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """[R, V] float32 (penalised, banned) logits -> the distribution sampled from:
    temperature, then min-p, top-k and top-p (each skipped when no row uses it)."""
    # Greedy rows (0) divide by 1 (their sample is discarded); tiny ones are floored so
    # logits / temperature stays finite.
    temperature = torch.where(t.temperature > 0, t.temperature.clamp_min(1e-5), 1.0)
    logits = logits / temperature[:, None]
    if t.any_min_p:
        logits = ops.apply_min_p(logits, t.min_p)
    if t.any_top_k or t.any_top_p:
        logits = ops.apply_top_k_top_p(logits, t.top_k if t.any_top_k else None,
                                       t.top_p if t.any_top_p else None)
    return logits.softmax(-1)


class Sampler:
    """Samples one token per row; ``default_generator`` draws the noise of rows without a seed."""

    def __init__(self, default_generator: torch.Generator) -> None:
        self.default_generator = default_generator

    def sample(self, logits: torch.Tensor, t: SamplingTensors) -> SamplerOutput:
        """logits [R, V] -> device tensors; no host synchronisation on CUDA."""
        logits = logits.float()
        raw_logprobs = logits.log_softmax(-1) if t.max_num_logprobs is not None else None
        if t.any_penalty:
            assert t.token_history is not None and t.prompt_lens is not None
            logits = ops.apply_penalties(logits, t.token_history, t.positions, t.prompt_lens,
                                         t.repetition_penalty, t.presence_penalty,
                                         t.frequency_penalty)
        if t.banned_token_ids is not None:
            logits = ops.ban_tokens(logits, t.banned_token_ids)
        tokens = logits.argmax(-1)                                        # greedy rows
        if not t.all_greedy:
            probs = sampling_probs(logits, t)
            noise = self._noise(probs.shape, t, probs.device)
            sampled = probs.div_(noise).argmax(-1)
            tokens = torch.where(t.temperature > 0, sampled, tokens)
        if raw_logprobs is None or t.max_num_logprobs is None:
            return SamplerOutput(tokens, None, None, None)
        ids, lps, ranks = ops.gather_logprobs(raw_logprobs, tokens, t.max_num_logprobs)
        return SamplerOutput(tokens, ids, lps, ranks)

    def _noise(self, shape: torch.Size, t: SamplingTensors, device: torch.device
               ) -> torch.Tensor:
        """[R, V] Exp(1) noise: the generator's, with seeded rows replaced by their hash."""
        noise = torch.empty(shape, dtype=torch.float32, device=device)
        noise.exponential_(generator=self.default_generator)
        # exponential_ may return an exact 0 (then probs / 0 = inf or nan wins the race).
        noise.clamp_min_(torch.finfo(torch.float32).tiny)
        if not t.any_seeded:
            return noise
        kernel = _seeded_noise_kernel() if device.type == "cuda" else None
        if kernel is not None:
            kernel(noise, t.seeds, t.seeded, t.positions)
            return noise
        hashed = ops.seeded_exponential(t.seeds, t.positions, shape[-1])
        return torch.where(t.seeded[:, None], hashed, noise)

    def __call__(self, logits: torch.Tensor, md: SamplingMetadata
                 ) -> tuple[list[int], list[list[TokenLogprobs] | None]]:
        """The list API of the current runner: sample, copy to the host, split per row."""
        out = self.sample(logits, md.tensors)
        host = SamplerOutput(*(x.cpu() if x is not None else None for x in (
            out.sampled, out.logprob_token_ids, out.logprobs, out.sampled_ranks)))
        return host.to_lists(md.num_logprobs)


@functools.cache
def _seeded_noise_kernel() -> Callable[..., None] | None:
    """The Triton launcher for seeded rows, or None where Triton is missing."""
    try:
        from actorexec.actors.model_runner.triton_seeded_noise import write_seeded_noise
    except ImportError:
        return None
    return write_seeded_noise


@dataclass
class SamplingMetadata:
    """``SamplingTensors`` built from request states, plus each row's logprob count."""

    tensors: SamplingTensors
    num_logprobs: list[int | None]

    @classmethod
    def from_states(cls, states: list[CachedRequestState], vocab_size: int,
                    device: torch.device, eos_token_ids: Iterable[int] = ()
                    ) -> SamplingMetadata:
        """One row per state (host lists -> device tensors: the slow, convenient path)."""
        ps = [s.sampling_params for s in states]
        eos = tuple(eos_token_ids)
        histories = [s.prompt_token_ids + s.output_token_ids for s in states]
        tensors = build_sampling_tensors(
            ps, [len(s.prompt_token_ids) for s in states], histories,
            [banned_ids(p, len(s.output_token_ids), eos) for p, s in zip(ps, states, strict=True)],
            vocab_size, device)
        return cls(tensors, [p.logprobs for p in ps])


def banned_ids(p: SamplingParams, num_output: int, eos_token_ids: tuple[int, ...]
               ) -> list[int]:
    """Ids to mask while the request has fewer than ``min_tokens`` outputs: its stop ids
    and the model's eos ids (unless ``ignore_eos``), as vLLM and transformers do."""
    if num_output >= p.min_tokens:
        return []
    return list(p.stop_token_ids) + ([] if p.ignore_eos else list(eos_token_ids))


def _as_int64(seed: int) -> int:
    """Any Python int seed as the int64 with the same low 64 bits."""
    return (seed + 2**63) % 2**64 - 2**63


def _padded(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(1, max((len(r) for r in rows), default=0))
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64,
                        device=device)


def build_sampling_tensors(params: list[SamplingParams], prompt_lens: list[int],
                           histories: list[list[int]], banned: list[list[int]], vocab_size: int,
                           device: torch.device) -> SamplingTensors:
    """Rows from host lists: ``histories[i]`` is row i's prompt + output ids so far."""
    def col(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    any_penalty = any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
                      for p in params)
    top_k = [p.top_k if p.top_k is not None and 0 < p.top_k < vocab_size else 0 for p in params]
    logprobs = [p.logprobs for p in params if p.logprobs is not None]
    return SamplingTensors(
        temperature=col([p.temperature for p in params]),
        top_k=torch.tensor(top_k, dtype=torch.int64, device=device),
        top_p=col([p.top_p for p in params]), min_p=col([p.min_p for p in params]),
        repetition_penalty=col([p.repetition_penalty for p in params]),
        presence_penalty=col([p.presence_penalty for p in params]),
        frequency_penalty=col([p.frequency_penalty for p in params]),
        seeds=torch.tensor([_as_int64(p.seed or 0) for p in params], dtype=torch.int64,
                           device=device),
        seeded=torch.tensor([p.seed is not None for p in params], device=device),
        positions=torch.tensor([len(h) for h in histories], dtype=torch.int64, device=device),
        token_history=_padded(histories, device) if any_penalty else None,
        prompt_lens=torch.tensor(prompt_lens, dtype=torch.int64, device=device)
        if any_penalty else None,
        banned_token_ids=_padded(banned, device) if any(banned) else None,
        all_greedy=all(p.temperature == 0 for p in params),
        any_seeded=any(p.seed is not None and p.temperature > 0 for p in params),
        any_penalty=any_penalty, any_top_k=any(top_k), any_top_p=any(p.top_p < 1 for p in params),
        any_min_p=any(p.min_p > 0 for p in params),
        max_num_logprobs=max(logprobs) if logprobs else None)
