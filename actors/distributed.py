"""Process-group set-up for one rank: the only place that knows about torch.distributed init.

Rank layout as in vLLM: TP ranks are contiguous within a pipeline stage,
``rank = pp_rank * tp + tp_rank``. Every rank creates every TP and PP group
(``new_group`` is collective) and keeps its own.

Nothing listens on all interfaces: on one host the ranks meet through a file
store in the executor's private 0700 directory (``file://``; torch's own TCP
store listens on every interface); across hosts (the Ray executor) through a
TCP store whose listening socket rank 0 binds to its node's IP alone
(``tcp://``, :func:`bound_tcp_store`); under an external launcher through
its ``env://``. gloo binds its pair sockets to the interface that holds
``ParallelConfig.host`` (``GLOO_SOCKET_IFNAME``, unless already set: the Ray
executor sets it to each node's own interface).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from actorexec.actors.model import symm_all_reduce
from actorexec.actors.model.hf_config import read_hf_config, resolve_max_model_len
from actorexec.actors.model.loader import resolve_dtype
from actorexec.actors.model.parallel import ParallelContext, split_layers
from actorexec.protocol.config import Config
from actorexec.protocol.errors import ConfigError
from actorexec.runtime.endpoints import interface_of


def validate_parallel(config: Config) -> None:
    """Raises ConfigError saying what to change if the model cannot split this way (or
    cannot run at this max_model_len: a sliding window it could outgrow)."""
    hf = read_hf_config(config.model.model)
    resolve_max_model_len(hf, config.model.max_model_len)
    p = config.parallel
    tp, pp = p.tensor_parallel_size, p.pipeline_parallel_size
    if hf.num_heads % tp:
        raise ConfigError(f"tensor_parallel_size={tp} must divide the {hf.num_heads} attention "
                          f"heads; pick a divisor of {hf.num_heads}")
    kv = hf.num_kv_heads
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        raise ConfigError(f"tensor_parallel_size={tp} and the {kv} KV heads must divide one "
                          "another (KV heads are replicated when fewer than TP ranks)")
    if hf.intermediate_size % tp:
        raise ConfigError(f"tensor_parallel_size={tp} must divide intermediate_size "
                          f"{hf.intermediate_size}")
    if p.pipeline_layer_split is not None and sum(p.pipeline_layer_split) != hf.num_layers:
        raise ConfigError(f"pipeline_layer_split={p.pipeline_layer_split} sums to "
                          f"{sum(p.pipeline_layer_split)}, but the model has {hf.num_layers} "
                          "layers")
    if pp > hf.num_layers:
        raise ConfigError(f"pipeline_parallel_size={pp} exceeds the model's {hf.num_layers} "
                          "layers; use at most that many stages")


STORE_TIMEOUT = timedelta(seconds=300)


def bound_tcp_store(url: str, rank: int, world_size: int) -> dist.TCPStore:
    """A TCPStore for ranks on several hosts (``tcp://host:port``, host = rank 0's node IP).

    torch's own ``tcp://`` rendezvous makes rank 0's store listen on every
    interface; here rank 0 binds the listening socket to ``host`` alone and hands
    it to the store (``master_listen_fd``). The other ranks connect as clients.
    """
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    if rank != 0:
        return dist.TCPStore(host, int(port), world_size, False, STORE_TIMEOUT)
    listener = socket.create_server((host, int(port)),
                                    family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    return dist.TCPStore(host, int(port), world_size, True, STORE_TIMEOUT,
                         wait_for_workers=False, master_listen_fd=listener.detach())


def init_distributed(config: Config, rank: int, distributed_init_method: str | None,
                     device: torch.device) -> ParallelContext:
    """Joins the process group (gloo on CPU, NCCL on CUDA) and returns this rank's context."""
    validate_parallel(config)
    p = config.parallel
    tp, pp = p.tensor_parallel_size, p.pipeline_parallel_size
    num_layers = read_hf_config(config.model.model).num_layers
    layer_range = split_layers(num_layers, pp, p.pipeline_layer_split)[rank // tp]
    if tp * pp == 1:
        return ParallelContext(layer_range=layer_range)
    if distributed_init_method is None:
        raise ConfigError(f"{tp * pp} ranks need a distributed_init_method to meet at")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = interface_of(p.host)  # this process is this rank's
    if not dist.is_initialized():
        if distributed_init_method.startswith("tcp://"):
            store = bound_tcp_store(distributed_init_method, rank, tp * pp)
            dist.init_process_group(backend, store=store, world_size=tp * pp, rank=rank)
        else:  # file:// in the private directory; env:// under an external launcher
            dist.init_process_group(backend, init_method=distributed_init_method,
                                    world_size=tp * pp, rank=rank)
    tp_group = pp_group = None
    for stage in range(pp):  # every rank must create every group, in the same order
        group = dist.new_group([stage * tp + t for t in range(tp)])
        if stage == rank // tp:
            tp_group = group
    for t in range(tp):
        group = dist.new_group([stage * tp + t for stage in range(pp)])
        if t == rank % tp:
            pp_group = group
    # Two-rank groups, each its own communicator (and NCCL stream): activations between
    # neighbouring stages, and sampled ids from the last stage back to the first
    # (token_feedback.py), so neither kind of message queues behind the other.
    links: dict[tuple[int, int], object] = {}
    for stage in range(pp - 1):
        for t in range(tp):
            pair = (stage * tp + t, (stage + 1) * tp + t)
            links[pair] = dist.new_group(list(pair))
    token_group = None
    if pp > 1:
        for t in range(tp):
            ends = [t, (pp - 1) * tp + t]
            group = dist.new_group(ends)
            if rank in ends:
                token_group = group
    small_all_reduce = None
    if tp > 1 and symm_all_reduce.choose(tp_group, device):
        hf = read_hf_config(config.model.model)
        dtype = resolve_dtype(config.model.dtype, hf, device)
        small_all_reduce = symm_all_reduce.SymmMemAllReduce(
            tp_group, dtype, device, symm_all_reduce.buffer_bytes(
                config.scheduler.max_num_seqs, hf.hidden_size, dtype))
    return ParallelContext(tp_rank=rank % tp, tp_size=tp, pp_rank=rank // tp, pp_size=pp,
                           layer_range=layer_range, tp_group=tp_group, pp_group=pp_group,
                           prev_link_group=links.get((rank - tp, rank)),
                           next_link_group=links.get((rank, rank + tp)),
                           token_group=token_group, small_all_reduce=small_all_reduce)
