"""Prometheus metrics under vLLM's names, so existing dashboards and alerts work.

Load gauges (running, waiting, KV cache usage) are read from the engine when
``/metrics`` is scraped; token counters and latency histograms are updated
as the server reads each request's stream. Each server has its own registry,
so several servers (or tests) in one process do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from actorexec.actors.engine import AsyncEngine, RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's buckets (seconds), so histograms line up with theirs.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class _EngineLoad(Collector):
    """Gauges read from the engine at scrape time (no background task)."""

    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.engine.stats()
        for name, doc, value in (
                ("vllm:num_requests_running", "Requests in the running batch.",
                 stats.num_running),
                ("vllm:num_requests_waiting", "Requests waiting to be scheduled.",
                 stats.num_waiting),
                ("vllm:kv_cache_usage_perc", "KV cache usage, 0 to 1 (1 = all blocks used).",
                 stats.kv_cache_usage)):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model_name], value)
            yield family


class ServerMetrics:
    """The server's metrics; ``track()`` makes one request's recorder."""

    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        r = self.registry
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels,
                                     registry=r).labels(model_name)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", labels,
                                         registry=r).labels(model_name)
        self.request_success = Counter(
            "vllm:request_success", "Finished requests, by finish reason.",
            [*labels, "finished_reason"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              labels, buckets=TTFT_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between output tokens.",
                             labels, buckets=ITL_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Arrival to last token.",
                             labels, buckets=E2E_BUCKETS, registry=r).labels(model_name)
        self.registry.register(_EngineLoad(engine, model_name))

    def track(self, num_prompt_tokens: int) -> RequestTracker:
        self.prompt_tokens.inc(num_prompt_tokens)
        return RequestTracker(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Timings of one engine request, fed with each output as the server reads it."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.arrival = self.last = time.perf_counter()
        self.num_tokens = 0

    def observe(self, out: RequestOutput) -> None:
        now = time.perf_counter()
        n = len(out.new_token_ids)
        if n:
            m = self.metrics
            m.generation_tokens.inc(n)
            if self.num_tokens == 0:
                m.ttft.observe(now - self.arrival)
            else:
                gap = (now - self.last) / n       # tokens that arrive together share the gap
                for _ in range(n):
                    m.itl.observe(gap)
            self.num_tokens += n
            self.last = now
        if out.finished:
            self.metrics.e2e.observe(now - self.arrival)
            reason = out.finish_reason.value if out.finish_reason is not None else "unknown"
            self.metrics.request_success.labels(self.metrics.model_name, reason).inc()

    def aborted(self) -> None:
        """The client went away before the request finished."""
        self.metrics.request_success.labels(self.metrics.model_name, "abort").inc()
