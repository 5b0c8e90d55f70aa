"""Which TP all-reduce a group takes, and the row-parallel layer's contract (CPU)."""

from __future__ import annotations

import pytest
import torch

from actorexec.actors.model import symm_all_reduce
from actorexec.actors.model.layers.linear import RowParallelLinear
from actorexec.actors.model.parallel import ParallelContext


def test_an_unknown_choice_is_refused(monkeypatch):
    monkeypatch.setenv(symm_all_reduce.ENV, "fastest")
    with pytest.raises(ValueError, match="auto"):
        symm_all_reduce.choose(None, torch.device("cpu"))


@pytest.mark.parametrize("choice", ["auto", "nccl", "symm_mem"])
def test_cpu_ranks_never_take_symmetric_memory(monkeypatch, choice):
    monkeypatch.setenv(symm_all_reduce.ENV, choice)
    assert symm_all_reduce.choose(None, torch.device("cpu")) is False


def test_a_row_parallel_layer_with_bias_must_sum_itself():
    layer = RowParallelLinear(8, 4, True, ParallelContext.single(1), torch.float32)
    torch.nn.init.ones_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    x = torch.ones(2, 8)
    assert torch.equal(layer(x), torch.full((2, 4), 8.0))
    with pytest.raises(ValueError, match="bias"):
        layer(x, reduce=False)


def test_without_a_fast_path_reduce_add_norm_is_sum_then_norm():
    from actorexec.actors.model.layers.norm import RMSNorm

    norm = RMSNorm(4, 1e-6, torch.float32)
    torch.nn.init.ones_(norm.weight)
    ctx = ParallelContext.single(1)
    partial, residual = torch.randn(3, 4), torch.randn(3, 4)
    got = ctx.reduce_add_norm(partial, residual, norm)
    want = norm(partial.clone(), residual)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert ctx.owned(partial) is partial
