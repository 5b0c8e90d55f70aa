"""The sampler's tensor operations: penalties, bans, filters, seeded noise, logprobs.

Every function works on a whole batch of rows ``[R, V]`` with per-row
parameters as ``[R]`` tensors, makes no host synchronisation and creates no
data-dependent shapes, so the sampler can run without a ``.item()``. Rows
whose parameter means "off" go through the same ops and come out unchanged.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


# ---- penalties and bans --------------------------------------------------------------------

def apply_penalties(logits: torch.Tensor, token_history: torch.Tensor, history_lens: torch.Tensor,
                    prompt_lens: torch.Tensor, repetition: torch.Tensor, presence: torch.Tensor,
                    frequency: torch.Tensor) -> torch.Tensor:
    """vLLM's penalties: repetition over prompt + output (divide positive logits, multiply
    negative ones), presence / frequency over output tokens only.

    logits [R, V] float32; token_history [R, L] int64, prompt ids then output ids; entries
    at or past history_lens [R] and negative ones are ignored (so a persistent token
    buffer can be passed as is); prompt_lens [R]; penalties [R] float32. Returns a new
    [R, V] tensor.
    """
    num_rows, vocab = logits.shape
    index = torch.arange(token_history.shape[1], device=logits.device)[None, :]   # [1, L]
    valid = (token_history >= 0) & (index < history_lens[:, None])
    ids = torch.where(valid, token_history, vocab)         # padding -> spare column V
    in_output = index >= prompt_lens[:, None]              # [R, L]
    out_counts = logits.new_zeros(num_rows, vocab + 1).scatter_add_(
        1, ids, (valid & in_output).float())[:, :vocab]    # [R, V]
    seen = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=logits.device).scatter_(
        1, ids, True)[:, :vocab]                           # [R, V] in prompt or output
    rep = repetition[:, None]
    logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    return logits - frequency[:, None] * out_counts - presence[:, None] * (out_counts > 0)


def ban_tokens(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Sets ``logits[r, banned[r, j]]`` to -inf; -1 entries are padding. banned [R, B] int64.

    An additive scatter, so repeated ids (and padding pointing at column 0) cannot race.
    """
    add = torch.where(banned >= 0, float("-inf"), 0.0).to(logits.dtype)
    return logits.scatter_add(1, banned.clamp_min(0), add)


# ---- filters ---------------------------------------------------------------------------------

def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drops tokens whose probability is below ``min_p`` times the row's top probability."""
    probs = logits.softmax(-1)
    threshold = min_p[:, None] * probs.amax(-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                      top_p: torch.Tensor | None) -> torch.Tensor:
    """Keeps the ``top_k`` largest logits (<= 0 or >= V: all; ties at the k-th value stay)
    and then the smallest set of tokens whose probability reaches ``top_p``
    (1.0: all, exactly). One ascending sort serves both; cost O(R V log V).
    """
    vocab = logits.shape[-1]
    ordered, order = logits.sort(dim=-1)                   # ascending
    if top_k is not None:
        k = torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k).long()
        kth = ordered.gather(1, (vocab - k)[:, None])      # the k-th largest value
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    if top_p is not None:
        # Drop the tail whose total mass is at most 1 - top_p; the top token always stays.
        # Rows with top_p >= 1 drop nothing (a float32 cumsum may round to 1 - 0 early).
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = (cumulative <= (1 - top_p)[:, None]) & (top_p < 1)[:, None]
        drop[:, -1] = False
        ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, ordered)


# ---- seeded noise ----------------------------------------------------------------------------

def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 in int64, without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (Wellons' "lowbias32") of int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seeded_row_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[R] int64 in [0, 2**32): a hash of each row's (64-bit seed, position)."""
    key = mix32((seeds & _M32) ^ 0x243F6A88)
    key = mix32(key ^ ((seeds >> 32) & _M32))
    return mix32(key ^ (positions & _M32))


def seeded_exponential(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, V] float32 Exp(1) noise that depends only on (seed, position, token id).

    Counter-based: no generator state, so a row draws the same noise in any batch
    and after a restart. u = (24 hash bits + 0.5) / 2**24 lies strictly inside
    (0, 1), so the noise is finite and > 0. The Triton kernel computes the same bits.
    """
    keys = seeded_row_keys(seeds, positions)                       # [R]
    ids = _mul32(torch.arange(vocab, device=seeds.device), 0x9E3779B9)
    bits = mix32(keys[:, None] ^ ids[None, :])                     # [R, V]
    u = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


# ---- logprobs --------------------------------------------------------------------------------

def gather_logprobs(logprobs: torch.Tensor, tokens: torch.Tensor, num_top: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [R, 1 + n], logprobs [R, 1 + n], ranks [R]): the sampled token first, then the
    top ``num_top``; rank is 1-based under the given distribution."""
    sampled = logprobs.gather(1, tokens[:, None])                  # [R, 1]
    ranks = (logprobs > sampled).sum(-1) + 1
    top_lp, top_ids = logprobs.topk(num_top, dim=-1)               # [R, n]
    return (torch.cat([tokens[:, None], top_ids], 1), torch.cat([sampled, top_lp], 1), ranks)
