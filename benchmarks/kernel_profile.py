"""Per-rank GPU kernel table of a few decode steps, taken inside the worker processes.

Run through callable RPC (``ParallelConfig.allow_callable_rpc``, benchmarks only):
``start(worker)`` starts a torch profiler (CUDA activity: kernels launched from
CUDA graphs included) and ``stop(worker)`` stops it and returns a summary small
enough for the wire: per kernel name its count and total µs, the sum of all
kernel time, and the span from the first kernel's start to the last one's end
(span minus busy time = the GPU waiting inside and between steps).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Any

import torch

_profilers: dict[int, Any] = {}


def start(worker: Any) -> None:
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
    prof.start()
    _profilers[id(worker)] = prof


def stop(worker: Any, top: int = 30) -> dict[str, Any]:
    prof = _profilers.pop(id(worker))
    prof.stop()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    return summarize([e for e in events if e.get("cat") == "kernel"], top)


def summarize(kernels: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """Kernel table (``[name, count, total_us]``, longest first) and busy / span µs."""
    per_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    spans = sorted((float(k["ts"]), float(k["ts"]) + float(k["dur"])) for k in kernels)
    busy, end = 0.0, float("-inf")
    for a, b in spans:  # union of intervals: overlapping kernels count once
        if b > end:
            busy += b - max(a, end)
            end = b
    for k in kernels:
        row = per_name[k["name"][:90]]
        row[0] += 1
        row[1] += float(k["dur"])
    table = sorted(([n, int(c), t] for n, (c, t) in per_name.items()), key=lambda r: -r[2])
    return {"kernels": len(kernels), "busy_us": busy,
            "span_us": (spans[-1][1] - spans[0][0]) if spans else 0.0,
            "table": table[:top]}
