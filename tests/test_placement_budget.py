"""The budgeted partial mirror (numa/placement.py): which tensor groups --numa mirror
--mirror-budget SIZE and --numa auto mirror, the extents that gives, the memory check's
advice, and the size strings. Worked out by hand on a small mixture whose sizes are
whole MiB, on a recorded 8-node machine (2 workers a node)."""

from __future__ import annotations

import pytest
from numallm.errors import BadInputError, ResourceError
from numallm.numa.placement import (
    PARTIAL,
    Matrix,
    build_plan,
    check_memory,
    choose_mode,
    group_reads,
    locality,
    tensor_group,
)
from numallm.numa.sizes import format_size, parse_size
from numallm.numa.topology import Topology
from numallm.numa.workers import plan_workers
from test_placement_plan import machines, rows_by_node, with_free  # noqa: F401  (machines: a fixture)
from test_topology_fixtures import extract  # noqa: F401  (the session fixture machines uses)

MiB = 1 << 20
N_EXPERT = 8
# Read in full by every token: router 16 MiB, output 128 MiB, q 256 MiB (400 MiB together);
# experts, a token reading 2 of 8: down 512 MiB, gate 1 GiB; the embeddings looked up, 128 MiB.
MOE = (
    Matrix("blk.0.q", 256, MiB, 1),
    Matrix("blk.0.router", 16, MiB, 1),
    *(Matrix(f"blk.0.gate_exps.{e}", 128, MiB, 1, read_share=2 / N_EXPERT) for e in range(N_EXPERT)),
    *(Matrix(f"blk.0.down_exps.{e}", 64, MiB, 1, read_share=2 / N_EXPERT) for e in range(N_EXPERT)),
    Matrix("output", 128, MiB, 1),
    Matrix("token_embd", 128, MiB, 1, matmul=False, lookup=True),
)
TOTAL = sum(m.nbytes for m in MOE)


@pytest.fixture(scope="module")
def eight(machines: dict[str, Topology]) -> Topology:  # noqa: F811
    return machines["16amd64-8n2c"]


def mirrored_of(choice: tuple) -> set[str]:
    return {g.name for g in choice[2] if g.placement == "mirror"}


def test_groups_rank_by_bytes_read_per_byte_stored() -> None:
    assert tensor_group("blk.12.gate_exps.7") == "gate_exps" and tensor_group("output") == "output"
    ranked = [(g, size // MiB, split) for g, size, _, split in group_reads(MOE)]
    assert ranked == [("router", 16, True), ("output", 128, True), ("q", 256, True),
                      ("down_exps", 512, True), ("gate_exps", 1024, True), ("token_embd", 128, False)]


@pytest.mark.parametrize("budget, mirrored, mode", [
    (400 * MiB, {"router", "output", "q"}, PARTIAL),  # exactly the always-read groups
    (399 * MiB, {"router", "output"}, PARTIAL),  # q no longer fits
    (1000 * MiB, {"router", "output", "q", "down_exps"}, PARTIAL),  # one expert group too
    (10 * MiB, set(), "distribute"),  # not even the router
    (TOTAL, None, "mirror"),  # everything: a plain mirror
])
def test_budget_mirrors_what_fits_in_rank_order(eight: Topology, budget: int, mirrored: set[str] | None,
                                                mode: str) -> None:
    workers = plan_workers(eight)
    choice = choose_mode("mirror", eight, workers, MOE, None, budget)
    assert choice.mode == mode and "\n" not in choice.reason
    if mode != PARTIAL:
        return
    assert mirrored_of(choice) == mirrored
    embd = next(g for g in choice.groups if g.name == "token_embd")
    assert embd.placement == "distribute" and "only worker 0 reads it" in embd.why
    plan = build_plan(choice.mode, eight, workers, MOE, None, groups=choice.groups)
    assert plan.mirrored == mirrored
    for m in MOE:
        held = {(e.node, e.row_lo, e.row_hi) for e in plan.extents_of(m.name)}
        if tensor_group(m.name) in mirrored:
            assert held == {(n, 0, m.rows) for n in range(8)}
        elif m.lookup:
            assert held == {(plan.homes[0], 0, m.rows)}
        else:  # each node exactly the rows its workers compute
            by_node = rows_by_node(workers, plan.homes, m)
            assert {n: set(range(lo, hi)) for n, lo, hi in held} == by_node
    copies = sum(m.nbytes for m in MOE if tensor_group(m.name) in mirrored)
    per_node = plan.weight_bytes_per_node()
    spread = TOTAL - copies - 128 * MiB  # the distributed rest, embeddings aside
    assert per_node == {n: copies + spread // 8 + (128 * MiB if n == 0 else 0) for n in range(8)}
    loc = locality(plan)
    assert loc["remote_bytes"] == 0 and loc["matmul_local_bytes"] == 400 * MiB + (1536 * MiB) // 4


def test_auto_mirrors_what_every_token_reads_when_a_copy_does_not_fit(eight: Topology) -> None:
    workers = plan_workers(eight)
    roomy = with_free(eight, dict.fromkeys(range(8), 4 << 30))
    assert choose_mode("auto", roomy, workers, MOE, None).mode == "mirror"
    # 1 GiB a node: no whole copy (2064 MiB), but the 400 MiB read by every token fit
    # beside the distributed experts; auto never mirrors an expert, whatever the room
    gib = with_free(eight, dict.fromkeys(range(8), 1 << 30))
    choice = choose_mode("auto", gib, workers, MOE, None)
    assert choice.mode == PARTIAL and mirrored_of(choice) == {"router", "output", "q"}
    assert "node 0 has 1.00 GiB free, less than a whole copy (2.02 GiB)" in choice.reason
    experts = [g for g in choice.groups if g.name.endswith("_exps")]
    assert all(g.placement == "distribute" and "a token reads 25.0%" in g.why for g in experts)
    check_memory(build_plan(PARTIAL, gib, workers, MOE, None, groups=choice.groups), gib)
    # 600 MiB: node 0 (which also holds the embeddings) has room for router and output
    # copies (496 MiB in all) but not q's as well (720 MiB)
    tight = with_free(eight, dict.fromkeys(range(8), 600 * MiB))
    choice = choose_mode("auto", tight, workers, MOE, None)
    assert choice.mode == PARTIAL and mirrored_of(choice) == {"router", "output"}
    q = next(g for g in choice.groups if g.name == "q")
    assert "does not fit node 0 (it would need 720.0 MiB of its 600.0 MiB free)" in q.why
    plan = build_plan(PARTIAL, tight, workers, MOE, None, groups=choice.groups)
    assert plan.weight_bytes_per_node()[0] == 496 * MiB
    check_memory(plan, tight)
    # 300 MiB: not even one distributed copy with a mirrored router fits: distribute
    assert choose_mode("auto", with_free(eight, dict.fromkeys(range(8), 300 * MiB)), workers, MOE).mode == \
        "distribute"


def test_memory_check_suggests_the_budget_that_fits(eight: Topology) -> None:
    workers = plan_workers(eight)
    gib = with_free(eight, dict.fromkeys(range(8), 1 << 30))
    with pytest.raises(ResourceError) as err:
        check_memory(build_plan("mirror", gib, workers, MOE, None), gib)
    msg = str(err.value)
    assert "NUMA node 0" in msg and "2.02 GiB" in msg and "--numa mirror --mirror-budget 400M would fit" in msg
    # a budget too large for the nodes: the message says so and offers the one that fits
    choice = choose_mode("mirror", gib, workers, MOE, None, 1000 * MiB)
    with pytest.raises(ResourceError, match=r"^a partial mirror needs .* --mirror-budget 400M would fit"):
        check_memory(build_plan(choice.mode, gib, workers, MOE, None, groups=choice.groups), gib)


def test_budget_goes_with_mirror_only(eight: Topology) -> None:
    workers = plan_workers(eight)
    for mode in ("auto", "distribute", "interleave", "isolate", "none"):
        with pytest.raises(BadInputError, match="--mirror-budget goes with --numa mirror"):
            choose_mode(mode, eight, workers, MOE, None, 1 << 30)
    with pytest.raises(BadInputError, match="negative"):
        choose_mode("mirror", eight, workers, MOE, None, -1)


@pytest.mark.parametrize("text, nbytes", [("200G", 200 << 30), ("512M", 512 << 20), ("1.5g", 3 << 29),
                                          ("64KiB", 64 << 10), ("2TB", 2 << 40), ("4096", 4096), (" 0 ", 0)])
def test_sizes_read_as_llama_cpp_writes_them(text: str, nbytes: int) -> None:
    assert parse_size(text, "--mirror-budget") == nbytes


@pytest.mark.parametrize("text", ["", "G", "12Q", "-1G", "1e9", "twelve", "1.2.3M"])
def test_a_bad_size_is_one_line_naming_the_flag(text: str) -> None:
    with pytest.raises(BadInputError, match=r"^--mirror-budget .* is not a size: .*200G") as err:
        parse_size(text, "--mirror-budget")
    assert "\n" not in str(err.value)


def test_formatted_budgets_read_back_at_least_as_large() -> None:
    for nbytes in (1, MiB, MiB + 1, 400 * MiB, 1 << 30, (1 << 30) + 1, 5 << 40):
        text = format_size(nbytes)
        assert nbytes <= parse_size(text, "--mirror-budget") < nbytes + MiB
    assert format_size(400 * MiB) == "400M" and format_size(3 << 30) == "3G"
