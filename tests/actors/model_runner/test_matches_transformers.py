"""Greedy tokens and last-token logprobs from the ModelRunner equal transformers'."""

from __future__ import annotations

import pytest
import torch

from actorexec.protocol import SamplingParams
from tests.actors.model_runner.sim_scheduler import SimScheduler, make_runner
from tests.actors.reference import hf_greedy, reference_model
from tests.checkpoints import ARCHITECTURES

PROMPTS = {"a": [1, 5, 9, 33, 77, 4, 12, 90, 3, 11, 64], "b": [1, 7], "c": [1, 40, 41, 42, 99]}
NEW_TOKENS = {"a": 6, "b": 9, "c": 4}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("token_budget", [256, 5], ids=["whole-prefill", "chunked-prefill"])
def test_greedy_batch_with_joins_matches_generate(checkpoints, arch, token_budget):
    path = checkpoints[arch]
    sim = SimScheduler(make_runner(path), token_budget=token_budget)
    # "a" and "b" start together; "c" joins at step 3, after "b" ... all finish at
    # different steps, so the batch changes shape while requests are mid-decode.
    got = sim.run({0: [("a", PROMPTS["a"], NEW_TOKENS["a"]), ("b", PROMPTS["b"], NEW_TOKENS["b"])],
                   3: [("c", PROMPTS["c"], NEW_TOKENS["c"])]})
    for req_id, prompt in PROMPTS.items():
        assert got[req_id] == hf_greedy(str(path), prompt, NEW_TOKENS[req_id]), req_id


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_last_token_logprobs_match_transformers(checkpoints, arch):
    path = checkpoints[arch]
    sim = SimScheduler(make_runner(path))
    prompt = PROMPTS["a"]
    sim.add("a", prompt, SamplingParams(temperature=0.0, logprobs=5), max_tokens=1)
    out = sim.step()
    (lp,) = out.logprobs[0]  # batch position 0: a
    with torch.no_grad():
        ref = reference_model(str(path))(torch.tensor([prompt])).logits[0, -1].log_softmax(-1)
    top = ref.topk(5)
    assert lp.token_ids[0] == int(ref.argmax()) and lp.sampled_rank == 1
    assert lp.token_ids[1:] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(lp.logprobs[1:]), top.values, atol=1e-4, rtol=1e-4)


LLAMA_VARIANTS = {
    "llama3-rope-scaling": dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "tied-embeddings": dict(tie_word_embeddings=True),
}


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_llama_variants_match_generate(tmp_path, variant):
    from tests.checkpoints import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path, "llama", **LLAMA_VARIANTS[variant])
    prompt = list(range(1, 30))  # past original_max_position_embeddings: scaling matters
    got = SimScheduler(make_runner(path), token_budget=8).run({0: [("a", prompt, 8)]})
    assert got["a"] == hf_greedy(str(path), prompt, 8)
