"""Persistent, device-resident request state: one row per live request.

Why: rebuilding every request's token list and block table on the host and
copying it each step costs host time and (from pageable memory) a stream
sync per copy. Instead each request owns a row of three device tables for as
long as it lives, and a step uploads only its *diff* (new tokens, new
blocks) through a pinned staging buffer:

- ``token_ids``   ``[max_reqs, max_model_len]`` int32: prompt + outputs, the
  source of every step's input ids and of penalty counts;
- ``block_table`` ``[max_reqs, max_blocks_per_req]`` int32;
- sampling parameter columns ``[max_reqs]`` (temperature, top-k, ...), written once
  when a request is added.

Writes are queued on the host as (flat index, value) pairs and applied by one
H2D copy plus a scatter per table (``flush``), ordered before the step's
forward on the compute stream. Cost at max_num_seqs=64, max_model_len=128k:
32 MiB of token table.
"""

from __future__ import annotations

import torch

from actorexec.protocol.errors import InvalidRequestError
from actorexec.protocol.sampling import SamplingParams

# Float sampling columns kept per row (gathered per step only when a feature is in use).
FLOAT_PARAMS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                "frequency_penalty")
INT_PARAMS = ("top_k", "seed", "seeded", "prompt_len")


class StagingRing:
    """Pinned host buffers reused round-robin, each guarded by the event of its last copy.

    Why a ring: a non-blocking H2D copy reads the pinned buffer later, on the
    copy stream; the host may refill that buffer only after the copy ran.
    With N buffers the host waits (normally not at all) on the N-th copy before this
    one; a step may take several, and PP keeps pp + 1 steps queued on stage 0.
    """

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device,
                 depth: int = 8) -> None:
        self.cuda = device.type == "cuda"
        self.buffers = [torch.empty(numel, dtype=dtype, pin_memory=self.cuda)
                        for _ in range(depth)]
        self.events: list[torch.cuda.Event | None] = [None] * depth
        self._next = 0

    def take(self, numel: int) -> tuple[torch.Tensor, int]:
        """A free pinned buffer of at least ``numel`` elements (grown if needed) and its slot."""
        slot = self._next
        self._next = (slot + 1) % len(self.buffers)
        event = self.events[slot]
        if event is not None:
            event.synchronize()  # the copy of `depth` steps ago; done long since
        if self.buffers[slot].numel() < numel:
            self.buffers[slot] = torch.empty(max(numel, 2 * self.buffers[slot].numel()),
                                             dtype=self.buffers[slot].dtype,
                                             pin_memory=self.cuda)
        return self.buffers[slot], slot

    def copied(self, slot: int, stream: torch.cuda.Stream | None) -> None:
        """Marks ``slot`` as read by the copy just queued on ``stream`` (None: the current one)."""
        if self.cuda:
            event = torch.cuda.Event()
            event.record(stream if stream is not None else torch.cuda.current_stream())
            self.events[slot] = event


class RequestRows:
    """Row allocation plus the device tables; see the module docstring."""

    def __init__(self, max_reqs: int, max_model_len: int, max_blocks: int,
                 device: torch.device) -> None:
        self.device = device
        self.max_reqs, self.max_model_len, self.max_blocks = max_reqs, max_model_len, max_blocks
        self.token_ids = torch.zeros(max_reqs, max_model_len, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(max_reqs, max_blocks, dtype=torch.int32, device=device)
        self.float_params = torch.zeros(len(FLOAT_PARAMS), max_reqs, dtype=torch.float32,
                                        device=device)
        # Integer columns: top_k (<= 0: all tokens), seed, seeded (0/1), prompt length.
        self.int_params = torch.zeros(len(INT_PARAMS), max_reqs, dtype=torch.int64,
                                      device=device)
        self._free = list(range(max_reqs - 1, -1, -1))
        self.row_of: dict[str, int] = {}
        # Pending writes: flat indices and values, applied by flush().
        self._tok_idx: list[int] = []
        self._tok_val: list[int] = []
        self._blk_idx: list[int] = []
        self._blk_val: list[int] = []
        self._param_rows: list[int] = []
        self._param_vals: list[list[float]] = []
        self._param_ints: list[list[int]] = []
        self._staging = StagingRing(4096, torch.int64, device)
        self._fstaging = StagingRing(256, torch.float32, device)

    # ---- rows -------------------------------------------------------------------------
    def add(self, req_id: str, params: SamplingParams, prompt_len: int) -> int:
        if not self._free:
            raise InvalidRequestError(f"no free request row for {req_id!r}: more than "
                                      f"max_num_seqs={self.max_reqs} requests are live")
        row = self._free.pop()
        self.row_of[req_id] = row
        self._param_rows.append(row)
        self._param_vals.append([float(getattr(params, name)) for name in FLOAT_PARAMS])
        seed = params.seed or 0
        self._param_ints.append([params.top_k or 0, (seed + 2**63) % 2**64 - 2**63,
                                 int(params.seed is not None), prompt_len])
        return row

    def remove(self, req_id: str) -> None:
        row = self.row_of.pop(req_id, None)
        if row is not None:
            self._free.append(row)

    def clear(self) -> None:
        for req_id in list(self.row_of):
            self.remove(req_id)

    # ---- queued writes ----------------------------------------------------------------
    def write_tokens(self, row: int, start: int, tokens: list[int]) -> None:
        """Tokens ``start..start+len`` of the request in ``row``."""
        if start + len(tokens) > self.max_model_len:
            raise InvalidRequestError(f"{start + len(tokens)} tokens exceed max_model_len "
                                      f"{self.max_model_len}")
        base = row * self.max_model_len + start
        self._tok_idx.extend(range(base, base + len(tokens)))
        self._tok_val.extend(tokens)

    def write_blocks(self, row: int, start: int, blocks: list[int]) -> None:
        """Block-table entries ``start..start+len`` of ``row``."""
        base = row * self.max_blocks + start
        self._blk_idx.extend(range(base, base + len(blocks)))
        self._blk_val.extend(blocks)

    def take_writes(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """The queued token and block writes (flat index and value lists), now cleared.

        The GPU path applies them inside the step's input preparation (one upload,
        one scatter kernel: triton_step_prep); ``flush`` applies them otherwise.
        """
        out = (self._tok_idx, self._tok_val, self._blk_idx, self._blk_val)
        self._tok_idx, self._tok_val, self._blk_idx, self._blk_val = [], [], [], []
        return out

    def flush(self, copy_stream: torch.cuda.Stream | None, writes: bool = True) -> None:
        """Applies the queued writes (``writes=False``: the sampling columns only): one
        pinned H2D copy, then scatters on the current stream.

        The copy runs on ``copy_stream`` (CUDA) and the current (compute) stream
        waits for it, so the forward that follows sees the writes.
        """
        npr = len(self._param_rows)
        nt, nb = (len(self._tok_idx), len(self._blk_idx)) if writes else (0, 0)
        if not (nt or nb or npr):
            return
        ni = len(INT_PARAMS)
        total = 2 * nt + 2 * nb + npr + ni * npr
        host, slot = self._staging.take(total)
        writes_now = ((self._tok_idx, self._tok_val, self._blk_idx, self._blk_val) if writes
                      else ([], [], [], []))
        fields = (*writes_now, self._param_rows, [v for ints in self._param_ints for v in ints])
        offset = 0
        for values in fields:
            n = len(values)
            if n:
                host[offset: offset + n] = torch.as_tensor(values, dtype=torch.int64)
            offset += n
        fhost, fslot = self._fstaging.take(max(1, npr * len(FLOAT_PARAMS)))
        if npr:
            fhost[: npr * len(FLOAT_PARAMS)] = torch.as_tensor(
                self._param_vals, dtype=torch.float32).reshape(-1)
        dev = _upload(host[:total], self.device, copy_stream)
        fdev = _upload(fhost[: npr * len(FLOAT_PARAMS)], self.device, copy_stream) if npr else None
        self._staging.copied(slot, copy_stream)
        self._fstaging.copied(fslot, copy_stream)
        parts = dev.split([nt, nt, nb, nb, npr, ni * npr])
        if nt:
            self.token_ids.view(-1).index_copy_(0, parts[0], parts[1].to(torch.int32))
        if nb:
            self.block_table.view(-1).index_copy_(0, parts[2], parts[3].to(torch.int32))
        if npr:
            rows = parts[4]
            assert fdev is not None
            self.float_params.index_copy_(1, rows, fdev.view(npr, len(FLOAT_PARAMS)).t())
            self.int_params.index_copy_(1, rows, parts[5].view(npr, ni).t())
        pending = [self._param_rows, self._param_vals, self._param_ints]
        if writes:
            pending += [self._tok_idx, self._tok_val, self._blk_idx, self._blk_val]
        for queue in pending:
            queue.clear()


def _upload(host: torch.Tensor, device: torch.device,
            copy_stream: torch.cuda.Stream | None) -> torch.Tensor:
    """Pinned host -> device on ``copy_stream``; the current stream waits for it."""
    if device.type != "cuda":
        return host.clone()
    compute = torch.cuda.current_stream(device)
    if copy_stream is None:  # no copy stream given (tools, tests): copy in stream order
        return host.to(device, non_blocking=True)
    # The destination is fresh, so the copy need not wait for earlier compute work:
    # it overlaps the previous step's kernels.
    with torch.cuda.stream(copy_stream):
        dev = host.to(device, non_blocking=True)
    compute.wait_stream(copy_stream)
    dev.record_stream(compute)  # allocated on the copy stream, used on the compute stream
    return dev


def upload_ints(values: list[int], device: torch.device,
                copy_stream: torch.cuda.Stream | None) -> torch.Tensor:
    """A small int64 list to the device through pinned memory (no pageable-copy sync)."""
    host = torch.tensor(values, dtype=torch.int64, pin_memory=device.type == "cuda")
    return _upload(host, device, copy_stream)
