"""Turns last-token logits into tokens, vectorised over the batch.

Order (as vLLM): logprobs of the raw distribution; penalties; then greedy
argmax or temperature -> top-k -> top-p -> min-p -> sample. Sampling uses the
exponential-race trick (argmax of probs / Exp(1) noise): each row's noise
comes from the request's own generator when it has a seed, so a seeded
request draws the same tokens alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.protocol.outputs import TokenLogprobs


@dataclass
class SamplingMetadata:
    """Per-row sampling parameters as tensors ([num_reqs] each) plus per-row generators."""

    temperature: torch.Tensor
    top_k: torch.Tensor          # vocab size where off
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    presence_penalty: torch.Tensor
    frequency_penalty: torch.Tensor
    generators: list[torch.Generator | None]
    num_logprobs: list[int | None]
    prompt_tokens: list[list[int]] | None   # only when a row has a penalty
    output_tokens: list[list[int]] | None

    @classmethod
    def from_states(cls, states: list[CachedRequestState], vocab_size: int,
                    device: torch.device) -> SamplingMetadata:
        ps = [s.sampling_params for s in states]

        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        penal = any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
                    for p in ps)
        return cls(
            temperature=col([p.temperature for p in ps]),
            top_k=torch.tensor([p.top_k or vocab_size for p in ps], device=device),
            top_p=col([p.top_p for p in ps]), min_p=col([p.min_p for p in ps]),
            repetition_penalty=col([p.repetition_penalty for p in ps]),
            presence_penalty=col([p.presence_penalty for p in ps]),
            frequency_penalty=col([p.frequency_penalty for p in ps]),
            generators=[s.generator for s in states],
            num_logprobs=[p.logprobs for p in ps],
            prompt_tokens=[s.prompt_token_ids for s in states] if penal else None,
            output_tokens=[s.output_token_ids for s in states] if penal else None)


def _token_counts(rows: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[num_reqs, vocab] occurrence counts, from one flat scatter."""
    counts = torch.zeros(len(rows), vocab, device=device)
    lens = torch.tensor([len(r) for r in rows], device=device)
    flat = torch.tensor([t for r in rows for t in r], dtype=torch.int64, device=device)
    row_idx = torch.repeat_interleave(torch.arange(len(rows), device=device), lens)
    counts.index_put_((row_idx, flat), torch.ones_like(flat, dtype=torch.float32),
                      accumulate=True)
    return counts


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Repetition over prompt + output (divide positive, multiply negative logits);
    presence / frequency over output only, as in vLLM."""
    if md.prompt_tokens is None or md.output_tokens is None:
        return logits
    vocab = logits.shape[-1]
    out_counts = _token_counts(md.output_tokens, vocab, logits.device)
    seen = (_token_counts(md.prompt_tokens, vocab, logits.device) + out_counts) > 0
    rep = md.repetition_penalty.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - md.frequency_penalty.unsqueeze(1) * out_counts
    return logits - md.presence_penalty.unsqueeze(1) * (out_counts > 0).float()


def filter_logits(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p as -inf masks; returns probabilities."""
    logits = logits / md.temperature.clamp_min(1e-5).unsqueeze(1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    drop = ranks.unsqueeze(0) >= md.top_k.unsqueeze(1)                  # top-k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    # top-p: drop a token once the mass strictly before it reaches top_p (keeps >= 1).
    drop |= (probs.cumsum(-1) - probs) >= md.top_p.unsqueeze(1)
    drop |= probs < md.min_p.unsqueeze(1) * probs[:, :1]                # min-p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return filtered.softmax(-1)


class Sampler:
    """Samples one token per row; ``default_generator`` serves rows without a seed."""

    def __init__(self, default_generator: torch.Generator) -> None:
        self.default_generator = default_generator

    def __call__(self, logits: torch.Tensor, md: SamplingMetadata
                 ) -> tuple[list[int], list[list[TokenLogprobs] | None]]:
        """logits [num_reqs, vocab] float32 -> (token per row, logprobs per row or None)."""
        raw_logprobs = logits.log_softmax(-1)
        logits = apply_penalties(logits, md)
        greedy = md.temperature == 0
        tokens = logits.argmax(-1)
        if not bool(greedy.all()):
            probs = filter_logits(logits, md)
            noise = torch.empty_like(probs)
            for i, gen in enumerate(md.generators):
                if not greedy[i]:  # draw only for rows that sample, so seeds stay in step
                    noise[i].exponential_(generator=gen or self.default_generator)
            noise[greedy] = 1.0
            tokens = torch.where(greedy, tokens, (probs / noise).argmax(-1))
        token_list = tokens.tolist()
        return token_list, self._logprobs(raw_logprobs, tokens, md)

    @staticmethod
    def _logprobs(logprobs: torch.Tensor, tokens: torch.Tensor, md: SamplingMetadata
                  ) -> list[list[TokenLogprobs] | None]:
        wanted = [i for i, n in enumerate(md.num_logprobs) if n is not None]
        out: list[list[TokenLogprobs] | None] = [None] * len(md.num_logprobs)
        if not wanted:
            return out
        rows = torch.tensor(wanted, device=tokens.device)
        lp, tok = logprobs[rows], tokens[rows]
        sampled = lp.gather(1, tok.unsqueeze(1))                          # [W, 1]
        rank = (lp > sampled).sum(-1) + 1
        k = max(md.num_logprobs[i] or 0 for i in wanted)
        top_lp, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], tok[:, None][:, :0])
        for j, i in enumerate(wanted):
            n = md.num_logprobs[i] or 0
            out[i] = [TokenLogprobs(
                token_ids=[int(tok[j]), *top_ids[j, :n].tolist()],
                logprobs=[float(sampled[j, 0]), *top_lp[j, :n].tolist()],
                sampled_rank=int(rank[j]))]
        return out
