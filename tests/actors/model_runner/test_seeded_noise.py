"""The seeded rows' noise: the Triton kernel computes the torch hash's numbers.

Runs the kernel in Triton's CPU interpreter (skipped without triton, as in CI,
or where CUDA is present) and compiled on a GPU (``gpu``).
"""

from __future__ import annotations

import pytest
import torch

from actorexec.actors.model_runner.sampler_ops import seeded_exponential
from tests.triton_interpret import use_triton_interpreter

INTERPRETED = use_triton_interpreter()

SEEDS = [0, 7, -5, 2**63 - 1, -2**63, 123456789012345]
POSITIONS = [0, 3, 99, 2**40, 5, 1]


def _kernel_vs_torch(device: str, vocab: int) -> None:
    from actorexec.actors.model_runner.triton_seeded_noise import write_seeded_noise
    seeds = torch.tensor(SEEDS, dtype=torch.int64, device=device)
    positions = torch.tensor(POSITIONS, device=device)
    seeded = torch.tensor([True, True, False, True, True, True], device=device)
    noise = torch.full((len(SEEDS), vocab), -1.0, device=device)
    write_seeded_noise(noise, seeds, seeded, positions)
    expected = seeded_exponential(seeds, positions, vocab)
    torch.testing.assert_close(noise[seeded], expected[seeded], rtol=1e-6, atol=1e-6)
    assert (noise[2] == -1).all()                                  # unseeded row untouched


def test_seeded_noise_is_exponential_and_depends_on_every_input():
    seeds = torch.tensor([1, 1, 2], dtype=torch.int64)
    noise = seeded_exponential(seeds, torch.tensor([10, 11, 10]), 20000)
    assert noise.min() > 0 and noise.isfinite().all()
    assert abs(noise.mean().item() - 1) < 0.03 and abs(noise.std().item() - 1) < 0.05
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    again = seeded_exponential(seeds[:1], torch.tensor([10]), 20000)
    assert torch.equal(again[0], noise[0])


@pytest.mark.skipif(not INTERPRETED, reason="needs triton and no CUDA (Triton's interpreter)")
def test_interpreted_kernel_matches_the_torch_hash():
    _kernel_vs_torch("cpu", 3000)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_kernel_matches_the_torch_hash():
    _kernel_vs_torch("cuda", 128256)
