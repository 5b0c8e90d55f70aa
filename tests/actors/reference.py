"""Reference tokens from transformers, and the request mix the model tests share."""

from __future__ import annotations

import functools

import torch

from tests.checkpoints import load_reference

# Mixed prompt lengths; "c" joins mid-batch and the three finish at different steps.
ARRIVALS = {0: [("a", [1, 5, 9, 33, 77, 4, 12, 90, 3, 11, 64], 6), ("b", [1, 7], 9)],
            3: [("c", [1, 40, 41, 42, 99], 4)]}


@functools.cache
def reference_model(path: str) -> torch.nn.Module:
    return load_reference(path)


def hf_greedy(path: str, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy ``generate()`` continuation of ``prompt``, ``n`` tokens."""
    model = reference_model(path)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def expected_tokens(path: str, arrivals: dict = ARRIVALS) -> dict[str, list[int]]:
    return {rid: hf_greedy(path, prompt, n)
            for reqs in arrivals.values() for rid, prompt, n in reqs}
