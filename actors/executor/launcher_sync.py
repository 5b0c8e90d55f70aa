"""What ranks under an external launcher must agree on, agreed through torch.distributed.

Each process runs its own engine, so nothing but the process group joins them.
Two facts must be equal on every rank for the engines to take identical
steps: the KV block count (the smallest any rank can hold) and each step's
sampled tokens (only the output rank samples). Both go over one gloo group:
an all-reduce of one integer at start-up, and per step a broadcast of the
output rank's ``ModelRunnerOutput`` as msgpack bytes (no pickle), a few KB.
"""

from __future__ import annotations

import msgspec
import torch
import torch.distributed as dist

from actorexec.protocol import ModelRunnerOutput


class RankSync:
    """A gloo group over every rank. Create it on every rank at the same point (creating
    a group is collective), and call its methods on every rank in the same order."""

    def __init__(self, output_rank: int) -> None:
        self.output_rank = output_rank
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._decoder = msgspec.msgpack.Decoder(ModelRunnerOutput | None)

    def min_over_ranks(self, value: int) -> int:
        if self.group is None:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())

    def share_output(self, output: ModelRunnerOutput | None) -> ModelRunnerOutput | None:
        """The output rank's output, on every rank (others pass their own, None)."""
        if self.group is None:
            return output
        is_src = dist.get_rank() == self.output_rank
        payload = msgspec.msgpack.encode(output) if is_src else b""
        size = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(size, self.output_rank, group=self.group)
        buffer = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if is_src
                  else torch.empty(int(size.item()), dtype=torch.uint8))  # [num_bytes]
        dist.broadcast(buffer, self.output_rank, group=self.group)
        return output if is_src else self._decoder.decode(buffer.numpy().tobytes())
