"""OpenAI request fields -> the engine's ``SamplingParams`` (one per choice) and stop strings."""

from __future__ import annotations

import hashlib

import msgspec

from actorexec.protocol import ConfigError, SamplingParams

from .errors import bad_request
from .protocol import SamplingFields

MAX_CHOICES = 128          # OpenAI's own limit on n


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index``: choice 0 keeps the request's seed, so ``n=1`` and
    ``n=2`` with one seed agree on their first choice; the others get well-spread seeds."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1       # a non-negative 63-bit seed


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def check_common(req: SamplingFields) -> None:
    """Rejects values the engine cannot honour, naming the field."""
    if not 1 <= req.n <= MAX_CHOICES:
        raise bad_request(f"n must be between 1 and {MAX_CHOICES}, got {req.n}", "n")
    if req.logit_bias:
        raise bad_request("logit_bias is not supported by this server", "logit_bias")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None and not -2.0 <= value <= 2.0:
            raise bad_request(f"{name} must be between -2 and 2, got {value}", name)
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise bad_request(f"seed must be between 0 and 2**63 - 1, got {req.seed}", "seed")
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise bad_request(f"temperature must be between 0 and 2, got {req.temperature}",
                          "temperature")


def sampling_params(req: SamplingFields, max_tokens: int, logprobs: int | None,
                    ) -> list[SamplingParams]:
    """One ``SamplingParams`` per choice (they differ only in their seed)."""
    fields = {
        # top_k -1 or 0 means "off" in vLLM's API, None in SamplingParams.
        "temperature": req.temperature, "top_p": req.top_p,
        "top_k": None if req.top_k in (-1, 0) else req.top_k,
        "min_p": req.min_p, "repetition_penalty": req.repetition_penalty,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        base = SamplingParams(max_tokens=max_tokens, min_tokens=min(req.min_tokens, max_tokens),
                              ignore_eos=req.ignore_eos, logprobs=logprobs, seed=req.seed,
                              **given)
    except ConfigError as exc:
        raise bad_request(str(exc).removeprefix("SamplingParams.")) from None
    if req.min_tokens > max_tokens:
        raise bad_request(f"min_tokens ({req.min_tokens}) must not exceed max_tokens "
                          f"({max_tokens})", "min_tokens")
    return [msgspec.structs.replace(base, seed=choice_seed(req.seed, i)) for i in range(req.n)]
