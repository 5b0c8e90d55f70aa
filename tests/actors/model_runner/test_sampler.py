"""The sampler on hand-made logits, and seeded sampling through the runner."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actorexec.actors.model_runner import sampler_ops as ops
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.sampler import (
    Sampler,
    SamplingMetadata,
    SamplingTensors,
    build_sampling_tensors,
    sampling_probs,
)
from actorexec.protocol import SamplingParams
from tests.actors.model_runner.sim_scheduler import SimScheduler, make_runner

CPU = torch.device("cpu")


def _md(*params: SamplingParams, outputs: list[list[int]] | None = None,
        eos: tuple[int, ...] = (), vocab: int = 8) -> SamplingMetadata:
    outs = outputs or [[]] * len(params)
    states = [CachedRequestState.from_new_params(f"r{i}", p, [1], outs[i])
              for i, p in enumerate(params)]
    return SamplingMetadata.from_states(states, vocab, CPU, eos_token_ids=eos)


def _sampler(seed: int = 0) -> Sampler:
    return Sampler(torch.Generator().manual_seed(seed))


LOGITS = torch.tensor([[0.0, 3.0, 2.9, 1.0, -1.0, 0.5, 0.2, 0.1]])


def test_greedy_takes_the_argmax():
    tokens, _ = _sampler()(LOGITS.clone(), _md(SamplingParams(temperature=0.0)))
    assert tokens == [1]


def test_greedy_rows_take_the_argmax_alone_and_among_sampled_rows():
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(4))
    greedy = SamplingParams(temperature=0.0)
    alone, _ = _sampler()(logits, _md(*[greedy] * 6, vocab=1000))
    mixed, _ = _sampler()(logits, _md(greedy, SamplingParams(temperature=1.0), greedy,
                                      SamplingParams(top_k=5), greedy, greedy, vocab=1000))
    argmax = logits.argmax(-1).tolist()
    assert alone == argmax
    assert [mixed[i] for i in (0, 2, 4, 5)] == [argmax[i] for i in (0, 2, 4, 5)]


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


def test_top_p_of_one_keeps_the_least_likely_token():
    # p(token 0) rounds to 1.0 in float32, so a float32 cumulative sum reaches 1.0 before
    # the tail; the tail (p ~ 2e-9 each) must still be kept when top_p == 1.
    logits = torch.tensor([[20.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    t = _md(SamplingParams(top_p=1.0), SamplingParams(top_p=0.5), vocab=4).tensors
    assert t.any_top_p
    probs = sampling_probs(logits, t)
    assert (probs[0, 1:] > 0).all()
    torch.testing.assert_close(probs[0], logits[0].softmax(-1))
    assert (probs[1, 1:] == 0).all()


def test_top_k_of_zero_or_minus_one_keeps_every_token():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    t = _md(*[SamplingParams()] * 3, vocab=50).tensors
    t = dataclasses.replace(t, top_k=torch.tensor([0, -1, 3]), any_top_k=True)
    probs = sampling_probs(logits, t)
    torch.testing.assert_close(probs[:2], logits[:2].softmax(-1))
    assert (probs[2] > 0).sum() == 3


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 9.0, 8.0, 7.0, 0.0]]).repeat(4, 1)   # 1 = eos, 2 = stop id
    stop = dict(temperature=0.0, min_tokens=2, stop_token_ids=(2,))
    md = _md(SamplingParams(**stop), SamplingParams(**stop),
             SamplingParams(**stop, ignore_eos=True), SamplingParams(temperature=0.0),
             outputs=[[], [4, 4], [4], []], eos=(1,), vocab=5)
    tokens, _ = _sampler()(logits, md)
    assert tokens == [3, 1, 1, 1]


def test_min_tokens_masks_sampled_rows_too():
    logits = torch.tensor([[5.0, 5.0, 5.0, -50.0]]).repeat(50, 1)
    params = [SamplingParams(temperature=1.0, min_tokens=1, stop_token_ids=(0,), seed=i)
              for i in range(50)]
    tokens, _ = _sampler()(logits, _md(*params, eos=(2,), vocab=4))
    assert set(tokens) == {1}


def test_seeded_row_does_not_depend_on_its_neighbours():
    p = SamplingParams(temperature=1.0, seed=123)
    alone, _ = _sampler()(LOGITS.clone(), _md(p))
    batch, _ = _sampler()(torch.cat([LOGITS.flip(-1), LOGITS, LOGITS]),
                          _md(SamplingParams(temperature=0.7), p, SamplingParams(temperature=0)))
    assert batch[1] == alone[0]


def test_seeded_rows_repeat_across_batches_and_restarts_but_vary_with_position():
    vocab = 500
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(9))
    params = [SamplingParams(temperature=1.0, top_p=0.95, seed=s) for s in range(12)]
    alone = [_sampler(1)(logits, _md(p, vocab=vocab))[0][0] for p in params]
    batched, _ = _sampler(2)(logits.repeat(12, 1), _md(*params, vocab=vocab))
    assert batched == alone
    # Same seed, later position (one more output token): a fresh draw.
    later = [_sampler(3)(logits, _md(p, outputs=[[7]], vocab=vocab))[0][0] for p in params]
    assert later != alone


def test_exponential_race_follows_the_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows = 4000
    t = build_sampling_tensors([SamplingParams(temperature=1.0, seed=5)] * rows, [1] * rows,
                               [[1] * (i + 1) for i in range(rows)], [[]] * rows, 4, CPU)
    tokens = _sampler().sample(probs.log().repeat(rows, 1), t).sampled
    freq = torch.bincount(tokens, minlength=4).float() / rows
    assert (freq - probs).abs().max() < 0.03


def _penalised(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    assert t.token_history is not None and t.prompt_lens is not None
    return ops.apply_penalties(logits, t.token_history, t.positions, t.prompt_lens,
                               t.repetition_penalty, t.presence_penalty, t.frequency_penalty)


def test_penalties_follow_vllm_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0, 0, 0, 0, 0]])
    # Prompt is [1]; output has token 0 twice and token 2 once.
    t = _md(SamplingParams(repetition_penalty=2.0, presence_penalty=0.5,
                           frequency_penalty=0.25), outputs=[[0, 0, 2]]).tensors
    out = _penalised(logits, t)[0]
    assert torch.allclose(out[:4], torch.tensor([2.0 / 2 - 0.5 - 0.5, -2.0 * 2,
                                                 1.0 / 2 - 0.5 - 0.25, 1.0]))


def test_penalties_equal_a_per_token_reference():
    gen = torch.Generator().manual_seed(11)
    vocab, rows = 30, 5
    logits = torch.randn(rows, vocab, generator=gen) * 3
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (1, 4, 9, 2, 6)]
    outputs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (0, 7, 3, 12, 1)]
    params = [SamplingParams(repetition_penalty=1.0 + 0.3 * i, presence_penalty=0.2 * i,
                             frequency_penalty=0.1 * (rows - i)) for i in range(rows)]
    t = build_sampling_tensors(params, [len(p) for p in prompts],
                               [p + o for p, o in zip(prompts, outputs, strict=True)],
                               [[]] * rows, vocab, CPU)
    assert t.token_history is not None
    got = _penalised(logits, t)
    # A persistent token buffer passed as is: whatever lies past each row's length is ignored.
    garbage = torch.randint(0, vocab, (rows, 9), generator=gen)
    t_garbage = dataclasses.replace(t, token_history=torch.cat([
        t.token_history.clamp_min(0), garbage], 1))
    torch.testing.assert_close(_penalised(logits, t_garbage), got)
    expected = logits.clone()
    for r, p in enumerate(params):
        for tok in range(vocab):
            x = float(expected[r, tok])
            if tok in prompts[r] or tok in outputs[r]:
                x = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
            count = outputs[r].count(tok)
            x -= p.frequency_penalty * count + p.presence_penalty * (count > 0)
            expected[r, tok] = x
    torch.testing.assert_close(got, expected)


def test_logprobs_report_sampled_token_rank_and_top_n():
    md = _md(SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0))
    _, lps = _sampler()(LOGITS.repeat(2, 1), md)
    ref = LOGITS[0].log_softmax(-1)
    (lp,) = lps[0]
    assert lps[1] is None and lp.sampled_rank == 1
    assert lp.token_ids == [1, 1, 2, 3]
    assert torch.allclose(torch.tensor(lp.logprobs), ref[[1, 1, 2, 3]])


def test_logprobs_equal_log_softmax_of_the_raw_logits():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 300, generator=gen) * 2
    params = [SamplingParams(temperature=1.5, logprobs=5, repetition_penalty=1.7, seed=1),
              SamplingParams(temperature=1.0, logprobs=0), SamplingParams(logprobs=20),
              SamplingParams()]
    t = _md(*params, outputs=[[3, 4]] * 4, vocab=300).tensors
    out = _sampler().sample(logits, t)
    assert out.logprobs is not None and out.logprob_token_ids is not None
    assert out.sampled_ranks is not None
    ref = logits.log_softmax(-1)
    torch.testing.assert_close(out.logprobs, ref.gather(1, out.logprob_token_ids))
    top = ref.topk(20, dim=-1)
    assert torch.equal(out.logprob_token_ids[:, 1:], top.indices)
    assert torch.equal(out.logprob_token_ids[:, 0], out.sampled)
    sampled_lp = ref.gather(1, out.sampled[:, None])
    assert torch.equal(out.sampled_ranks, (ref > sampled_lp).sum(-1) + 1)
    _, lists = out.to_lists([5, 0, 20, None])
    assert [len(x[0].token_ids) if x else None for x in lists] == [6, 1, 21, None]


def test_sampler_skips_logprobs_when_none_asked():
    t = _md(SamplingParams(), SamplingParams(temperature=0)).tensors
    out = _sampler().sample(LOGITS.repeat(2, 1), t)
    assert out.logprobs is None and out.sampled.shape == (2,)


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


def _all_features(rows: int, vocab: int, device: torch.device) -> SamplingTensors:
    params = [SamplingParams(temperature=0.0, logprobs=2),
              SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=3, logprobs=20),
              SamplingParams(temperature=1.1, min_p=0.05, repetition_penalty=1.3,
                             presence_penalty=0.4, frequency_penalty=0.2, min_tokens=4,
                             stop_token_ids=(5, 6))]
    params = (params * rows)[:rows]
    histories = [[1, 2, 3] + [7] * (i % 5) for i in range(rows)]
    banned = [[5, 6, 2] if i % 3 == 2 else [] for i in range(rows)]
    return build_sampling_tensors(params, [3] * rows, histories, banned, vocab, device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_sampler_makes_no_host_sync_and_matches_itself_across_batches():
    dev = torch.device("cuda")
    vocab = 128256
    logits = torch.randn(9, vocab, device=dev) * 4
    t = _all_features(9, vocab, dev)
    sampler = Sampler(torch.Generator(device=dev).manual_seed(0))
    sampler.sample(logits, t)                                   # compile the noise kernel
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler.sample(logits, t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tokens = out.sampled.cpu()
    # Seeded rows (1, 4, 7) draw the same alone; greedy rows (0, 3, 6) take the argmax.
    for i in (1, 4, 7):
        row = dataclasses.replace(
            t, **{f.name: getattr(t, f.name)[i:i + 1] for f in dataclasses.fields(t)
                  if isinstance(getattr(t, f.name), torch.Tensor)})
        assert sampler.sample(logits[i:i + 1], row).sampled.item() == tokens[i]
    assert tokens[[0, 3, 6]].tolist() == logits[[0, 3, 6]].argmax(-1).tolist()
    assert not set(tokens[[2, 5, 8]].tolist()) & {5, 6, 2}
