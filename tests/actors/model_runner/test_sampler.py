"""The sampler on hand-made logits, and seeded sampling through the runner."""

from __future__ import annotations

import torch

from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.sampler import Sampler, SamplingMetadata, apply_penalties
from actorexec.protocol import SamplingParams
from tests.actors.model_runner.sim_scheduler import SimScheduler, make_runner

CPU = torch.device("cpu")


def _md(*params: SamplingParams, outputs: list[list[int]] | None = None) -> SamplingMetadata:
    outs = outputs or [[]] * len(params)
    states = [CachedRequestState.from_new_params(f"r{i}", p, [1], outs[i])
              for i, p in enumerate(params)]
    return SamplingMetadata.from_states(states, 8, CPU)


def _sampler() -> Sampler:
    return Sampler(torch.Generator().manual_seed(0))


LOGITS = torch.tensor([[0.0, 3.0, 2.9, 1.0, -1.0, 0.5, 0.2, 0.1]])


def test_greedy_takes_the_argmax():
    tokens, _ = _sampler()(LOGITS.clone(), _md(SamplingParams(temperature=0.0)))
    assert tokens == [1]


def test_top_k_one_is_greedy_even_at_high_temperature():
    md = _md(*[SamplingParams(temperature=5.0, top_k=1, seed=i) for i in range(4)])
    tokens, _ = _sampler()(LOGITS.repeat(4, 1), md)
    assert tokens == [1, 1, 1, 1]


def test_top_p_and_min_p_keep_only_the_head():
    md = _md(*[SamplingParams(temperature=1.0, top_p=0.6, seed=i) for i in range(20)])
    tokens, _ = _sampler()(LOGITS.repeat(20, 1), md)
    assert set(tokens) <= {1, 2}
    md = _md(*[SamplingParams(temperature=1.0, min_p=0.5, seed=i) for i in range(20)])
    tokens, _ = _sampler()(LOGITS.repeat(20, 1), md)
    assert set(tokens) <= {1, 2}


def test_seeded_row_does_not_depend_on_its_neighbours():
    p = SamplingParams(temperature=1.0, seed=123)
    alone, _ = _sampler()(LOGITS.clone(), _md(p))
    batch, _ = _sampler()(torch.cat([LOGITS.flip(-1), LOGITS, LOGITS]),
                          _md(SamplingParams(temperature=0.7), p, SamplingParams(temperature=0)))
    assert batch[1] == alone[0]


def test_penalties_follow_vllm_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0, 0, 0, 0, 0]])
    # Prompt is [1]; output has token 0 twice and token 2 once.
    md = _md(SamplingParams(repetition_penalty=2.0, presence_penalty=0.5,
                            frequency_penalty=0.25), outputs=[[0, 0, 2]])
    out = apply_penalties(logits.clone(), md)[0]
    assert torch.allclose(out[:4], torch.tensor([2.0 / 2 - 0.5 - 0.5, -2.0 * 2,
                                                 1.0 / 2 - 0.5 - 0.25, 1.0]))


def test_logprobs_report_sampled_token_rank_and_top_n():
    md = _md(SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0))
    _, lps = _sampler()(LOGITS.repeat(2, 1), md)
    ref = LOGITS[0].log_softmax(-1)
    (lp,) = lps[0]
    assert lps[1] is None and lp.sampled_rank == 1
    assert lp.token_ids == [1, 1, 2, 3]
    assert torch.allclose(torch.tensor(lp.logprobs), ref[[1, 1, 2, 3]])


def test_seeded_requests_sample_the_same_tokens_alone_and_batched(checkpoints):
    path = checkpoints["qwen2"]
    params = SamplingParams(temperature=1.0, top_k=20, seed=7)
    alone = SimScheduler(make_runner(path))
    alone.add("s", [1, 5, 9], params, max_tokens=8)
    while alone.running:
        alone.step()
    batched = SimScheduler(make_runner(path), token_budget=6)
    batched.add("n1", [1, 2, 3, 4, 5, 6, 7], SamplingParams(temperature=0.9), max_tokens=5)
    batched.add("s", [1, 5, 9], params, max_tokens=8)
    batched.add("n2", [1, 8], SamplingParams(temperature=1.3, seed=99), max_tokens=3)
    while batched.running:
        batched.step()
    assert batched.done["s"].output == alone.done["s"].output
