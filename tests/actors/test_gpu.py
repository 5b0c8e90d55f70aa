"""CUDA: the same greedy tokens as transformers, on one GPU and over NCCL (TP/PP).

Marked ``gpu``; skipped cleanly where CUDA is absent (CI, this machine). Run on
the lent GPU machines by benchmarks/device_run.sh.
"""

from __future__ import annotations

import pytest
import torch

from actorexec.actors.executor import Executor
from actorexec.protocol import DeviceConfig
from tests.actors.reference import ARRIVALS, expected_tokens
from tests.actors.test_executor_runs_models import fresh_sim, model_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend,tp,pp", [("uni", 1, 1), ("mp", 1, 1), ("mp", 2, 1),
                                           ("mp", 1, 2)],
                         ids=["uni", "mp", "tp2-nccl", "pp2-nccl"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
async def test_cuda_greedy_tokens_match_transformers(checkpoints, arch, backend, tp, pp):
    if tp * pp > gpus():
        pytest.skip(f"needs {tp * pp} GPUs")
    path = str(checkpoints[arch])
    config = model_config(path, backend, tp, pp).replace(device=DeviceConfig(device="cuda"))
    async with await Executor.create(config) as executor:
        await executor.initialize_kv_cache()
        got = await fresh_sim(5).run_async(executor.execute_model, ARRIVALS)
    assert got == expected_tokens(path)
