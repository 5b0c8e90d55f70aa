"""The OpenAI-compatible server as a real process, driven by the official ``openai`` client.

One server (default model, uni backend, an API key) serves the whole module;
the tests run in order and each leaves the engine idle. Greedy decoding is a
pure function of the prompt, which gives every comparison a reference.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator

import pytest

# The serving extra and the test client; CI installs both, a bare GPU machine may not.
openai = pytest.importorskip("openai")
text_string_to_metric_families = pytest.importorskip(
    "prometheus_client.parser").text_string_to_metric_families

from actorexec.actors.engine import ByteTokenizer  # noqa: E402
from tests.entrypoints.server import Server  # noqa: E402

MODEL = "actorexec-default"
KEY = "test-key"
PROMPT = "This program is free software"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server("--api-key", KEY, cache=tmp_path_factory.mktemp("cache"))
    yield srv
    code = srv.stop()
    # Ctrl-C (SIGINT) is a clean shutdown: exit 0, no traceback.
    assert code == 0, srv.stderr_text
    assert "Traceback" not in srv.stderr_text, srv.stderr_text


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def greedy(**extra: object) -> dict[str, object]:
    return {"temperature": 0.0, "extra_body": {"ignore_eos": True, **extra}}


def metrics(server: Server) -> dict[str, float]:
    """``name{labels}`` -> value for every vllm: sample, parsed by prometheus_client."""
    status, body = server.get("/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[s.name + (f"{{{extra}}}" if extra else "")] = s.value
    return out


def wait_idle(server: Server, timeout_s: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics(server)
        if m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy after {timeout_s} s: {m}")
        time.sleep(0.05)


# ---------------------------------------------------------------- completions
def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_returns_text_and_usage(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, **greedy())
    choice = out.choices[0]
    assert out.object == "text_completion" and choice.finish_reason == "length"
    assert choice.text and out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens == len(ByteTokenizer().encode(PROMPT))
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_streamed_completion_matches_the_non_streamed_one(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, **greedy())
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20,
                                            stream=True, stream_options={"include_usage": True},
                                            **greedy()))
    *text_chunks, usage_chunk = chunks
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 20
    assert all(c.usage is None for c in text_chunks)


def test_sse_wire_format_ends_with_done(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "stream": True}),
        {"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = resp.read().decode().split("\n\n")
    conn.close()
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_logprobs_come_with_each_completion_token(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, logprobs=3,
                                    **greedy())
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == out.choices[0].text
    # Greedy: the sampled token is the most likely one.
    assert all(t in top and max(top.values()) == top[t] for t, top in
               zip(lp.tokens, lp.top_logprobs, strict=True))


# ----------------------------------------------------------------------- chat
def test_chat_completion_uses_the_chat_template(client):
    messages = [{"role": "user", "content": "Hello"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                          **greedy())
    choice = full.choices[0]
    assert full.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason == "length"
    # "<s>User: Hello\nAssistant:" (BOS written by the template).
    assert full.usage.prompt_tokens == 1 + len(b"User: Hello\nAssistant:")

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                 stream=True, **greedy()))
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_chat_logprobs(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=4, logprobs=True, top_logprobs=2, **greedy())
    content = out.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)
    assert "".join(c.token for c in content) == out.choices[0].message.content


# ------------------------------------------------------------------- sampling
def test_stop_string_ends_the_text_before_it_in_both_modes(client):
    reference = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40,
                                          **greedy()).choices[0].text
    stop = reference[12:15]
    expected = reference[:reference.index(stop)]
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, stop=[stop],
                                     **greedy())
    assert full.choices[0].text == expected and full.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40,
                                            stop=stop, stream=True, **greedy()))
    # Nothing of the stop string was streamed, even when it arrived split over steps.
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices_each_finish_once(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, seed=7,
                                    temperature=1.0, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    assert out.usage.completion_tokens == 24
    assert len({c.text for c in out.choices}) > 1        # distinct seeds per choice
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=2, seed=7,
        stream=True, extra_body={"ignore_eos": True}))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine] == [None] * (len(mine) - 1) + ["length"]


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int, n: int = 1) -> list[str]:
        out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, seed=seed,
                                        n=n, temperature=1.0, extra_body={"ignore_eos": True})
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    first = sample(1234)
    assert sample(1234) == first
    assert sample(99) != first
    assert sample(1234, n=2)[0] == first[0]       # choice 0 keeps the request's seed


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": -1.0}, "temperature"),
    ({"max_tokens": 0}, None),
    ({"n": 0}, "n"),
    ({"max_tokens": 5000}, "max_tokens"),
    ({"extra_body": {"max_token": 3}}, None),
])
def test_invalid_requests_get_400_in_openai_shape(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, **kwargs)
    error = info.value.body
    assert info.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["message"] and error["param"] == param


def test_empty_prompt_and_bad_chat_messages_are_400(client):
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.completions.create(model=MODEL, prompt="", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}])


def test_unknown_model_is_404_and_wrong_key_is_401(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    assert server.get("/health")[0] == 200            # probes need no key


# ----------------------------------------------------------- metrics and load
def test_metrics_parse_and_count_tokens(server, client):
    before = metrics(server)
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=7, **greedy())
    after = wait_idle(server)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count"):
        assert name in after, name
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 7
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == \
        out.usage.prompt_tokens
    assert after["vllm:inter_token_latency_seconds_count"] - \
        before["vllm:inter_token_latency_seconds_count"] == 6
    assert after["vllm:e2e_request_latency_seconds_count"] - \
        before["vllm:e2e_request_latency_seconds_count"] == 1


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(server):
    aborted = "vllm:request_success_total{finished_reason=abort}"
    before = metrics(server).get(aborted, 0.0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": PROMPT, "max_tokens": 900, "ignore_eos": True,
         "stream": True}), {"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.readline()                           # the first event has arrived: it is running
    busy = metrics(server)
    assert busy["vllm:num_requests_running"] == 1 and busy["vllm:kv_cache_usage_perc"] > 0
    conn.sock.close()
    conn.close()
    after = wait_idle(server)
    assert after[aborted] == before + 1          # it was aborted, not run to its end


async def test_64_concurrent_streams_all_complete(server):
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                                timeout=120)

    async def one(i: int) -> tuple[str, str | None, int]:
        stream = await client.completions.create(
            model=MODEL, prompt=f"{PROMPT} {i}", max_tokens=16, stream=True, seed=i,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        text, reason, tokens = "", None, 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                reason = chunk.choices[0].finish_reason or reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, reason, tokens

    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), 240)
    finally:
        await client.close()
    assert all(reason == "length" and tokens == 16 for _, reason, tokens in results), results
    wait_idle(server)


def test_server_log_has_no_errors_so_far(server):
    assert "Traceback" not in server.stderr_text and "ERROR" not in server.stderr_text, \
        server.stderr_text
