"""Which bundle each rank gets: whole TP groups on one node wherever the bundles allow,
the caller's node first; a TP group split over nodes only when nothing else fits, and then
the logged layout says so. Pure functions: no Ray needed."""

from __future__ import annotations

import pytest

from actorexec.actors.executor.ray_layout import (
    RankPlacement,
    describe_layout,
    plan_ranks,
    split_tp_groups,
)


def nodes_of(order: list[int], bundle_nodes: list[str]) -> list[str]:
    return [bundle_nodes[b] for b in order]


def test_interleaved_bundles_are_regrouped_so_each_tp_group_shares_a_node():
    bundle_nodes = ["A", "B", "A", "B"]  # as Ray may report a PACK over two nodes
    order = plan_ranks(bundle_nodes, tp=2, pp=2, first_node="A")
    assert sorted(order) == [0, 1, 2, 3]
    assert nodes_of(order, bundle_nodes) == ["A", "A", "B", "B"]


def test_the_callers_node_takes_the_first_stage():
    bundle_nodes = ["B", "B", "A", "A"]
    assert nodes_of(plan_ranks(bundle_nodes, 2, 2, first_node="A"), bundle_nodes) == \
        ["A", "A", "B", "B"]
    assert nodes_of(plan_ranks(bundle_nodes, 2, 2, first_node=None), bundle_nodes) == \
        ["B", "B", "A", "A"]


def test_uneven_nodes_give_whole_groups_first_and_split_only_what_cannot_fit():
    bundle_nodes = ["A", "A", "A", "B", "C", "C"]  # tp=2, pp=3: A holds one group, C one
    order = plan_ranks(bundle_nodes, tp=2, pp=3, first_node="A")
    by_stage = [set(nodes_of(order, bundle_nodes)[s * 2:(s + 1) * 2]) for s in range(3)]
    assert by_stage[:2] == [{"A"}, {"C"}] and by_stage[2] == {"A", "B"}
    ips = {"A": "10.0.0.65", "B": "10.0.0.66", "C": "10.0.0.67"}
    placements = [RankPlacement(r, r // 2, r % 2, b, bundle_nodes[b], ips[bundle_nodes[b]])
                  for r, b in enumerate(order)]
    assert split_tp_groups(placements, tp=2) == [2]
    text = describe_layout(placements, "PACK", tp=2)
    assert "stage 2: rank 4 on 10.0.0.65" in text and "span nodes" in text


def test_pipeline_stages_over_nodes_are_not_called_slow():
    bundle_nodes = ["A", "B"]
    order = plan_ranks(bundle_nodes, tp=1, pp=2, first_node="A")
    placements = [RankPlacement(r, r, 0, b, bundle_nodes[b], "ip") for r, b in enumerate(order)]
    assert split_tp_groups(placements, tp=1) == []
    assert "span nodes" not in describe_layout(placements, "STRICT_SPREAD", tp=1)


def test_a_bundle_count_that_does_not_match_the_ranks_is_refused():
    with pytest.raises(ValueError, match="3 bundles for 2 x 2 ranks"):
        plan_ranks(["A", "A", "B"], 2, 2)
