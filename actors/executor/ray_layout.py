"""Which placement-group bundle (and so which node) each rank gets, and how that is logged.

Ranks are laid out as everywhere in actorexec: ``rank = stage * tp + tp_rank``.
A tensor-parallel group all-reduces inside every layer, so over a network it
is slow; a pipeline stage boundary sends one activation per step, which a
network carries well. So whole TP groups go to one node wherever the bundles
allow, and stages may cross nodes. Pure functions: no Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RankPlacement:
    """Where one rank runs: its bundle in the placement group, node and process, and how
    the executor reaches it (``"shm"`` on the driver's node, else ``"tcp"``)."""

    rank: int
    stage: int
    tp_rank: int
    bundle: int
    node_id: str
    node_ip: str
    pid: int = 0
    transport: str = "tcp"


def plan_ranks(bundle_nodes: Sequence[str], tp: int, pp: int,
               first_node: str | None = None) -> list[int]:
    """The bundle index for each rank (``result[rank] = bundle``).

    ``bundle_nodes[b]`` is the node bundle ``b`` was placed on. Nodes are taken
    in order (``first_node``, usually the caller's, first; then by first
    bundle), each giving whole TP groups while it has ``tp`` bundles left, one
    stage after another; stages that fit on no single node take what is left.
    """
    if len(bundle_nodes) != tp * pp:
        raise ValueError(f"{len(bundle_nodes)} bundles for {tp} x {pp} ranks")
    free: dict[str, list[int]] = {}
    for bundle, node in enumerate(bundle_nodes):
        free.setdefault(node, []).append(bundle)
    nodes = sorted(free, key=lambda n: (n != first_node, free[n][0]))
    stages: list[list[int]] = []
    for node in nodes:
        while len(stages) < pp and len(free[node]) >= tp:
            stages.append([free[node].pop(0) for _ in range(tp)])
    leftover = [b for node in nodes for b in free[node]]
    while len(stages) < pp:  # a TP group split over nodes: allowed, logged as slow
        stages.append([leftover.pop(0) for _ in range(tp)])
    return [bundle for stage in stages for bundle in stage]


def split_tp_groups(placements: Sequence[RankPlacement], tp: int) -> list[int]:
    """Stages whose TP ranks are not all on one node."""
    stages = sorted({p.stage for p in placements})
    return [s for s in stages
            if len({p.node_id for p in placements if p.stage == s}) > 1 and tp > 1]


def describe_layout(placements: Sequence[RankPlacement], strategy: str, tp: int) -> str:
    """One line per stage: its ranks, node IPs (short node ids), pids and transports."""
    lines = [f"ray layout ({strategy}, {len(placements)} ranks, tp={tp}):"]
    for stage in sorted({p.stage for p in placements}):
        ranks = [p for p in placements if p.stage == stage]
        where = ", ".join(f"rank {p.rank} on {p.node_ip} ({p.node_id[:8]}) pid {p.pid} "
                          f"over {p.transport}" for p in ranks)
        lines.append(f"  stage {stage}: {where}")
    split = split_tp_groups(placements, tp)
    if split:
        lines.append(f"  TP groups of stage(s) {split} span nodes: every layer's all-reduce "
                     "crosses the network (slow); give each node room for tp bundles or "
                     "use placement_strategy='PACK'")
    return "\n".join(lines)
