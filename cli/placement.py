"""`numallm placement`: load and place a model (no kernels compiled, so it runs in the
NUMA VM on real models too), then report where the pages really are; with --dry-run,
plan it from the file's tensor table alone (engine/dry_run.py), on this machine or a
recorded one (--root), reading no weight."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from numallm.cli.options import engine_options
from numallm.errors import BadInputError
from numallm.numa.sizes import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("placement options")
    g.add_argument("--dry-run", action="store_true",
                   help="plan from the file's tensor table without loading the weights (a file cut after "
                   "its tensor table will do); --root may name a recorded machine")
    g.add_argument("--node-memory", default=None, metavar="SIZE",
                   help="with --dry-run: plan as if every NUMA node had SIZE free (e.g. 512G; default: "
                   "each node's free memory, as the topology tells)")


def run(args: argparse.Namespace) -> int:
    if args.pipeline != 1:
        raise BadInputError("numallm placement shows one machine's placement of the whole model: --pipeline "
                            "does not apply (GET /v1/numallm/placement of `numallm serve --pipeline N` shows "
                            "each stage's)")
    if args.dry_run:
        return _dry_run(args)
    if args.node_memory is not None:
        raise BadInputError("--node-memory goes with --dry-run (a real placement uses the real free memory)")
    from numallm.engine.model_load import load_model  # numpy and the loader: only when it runs

    if args.root != "/":
        raise BadInputError("numallm placement places memory on this machine: --root does not apply "
                            "(use --dry-run to plan for a recorded machine)")
    options = engine_options(args)
    del options["pipeline"]  # refused above
    loaded = load_model(**options)
    try:
        report = loaded.placed.page_report()
    finally:
        loaded.placed.close()
    report = {"model": str(loaded.path), "n_ctx": loaded.n_ctx, **report}
    print(json.dumps(report) if args.json else render_text(report))
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from numallm.engine.arch import upgrade
    from numallm.engine.dry_run import context_size, dry_run
    from numallm.engine.gguf_file import read_gguf
    from numallm.engine.model_load import DEFAULT_CTX
    from numallm.engine.model_store import resolve_model
    from numallm.engine.placing import placed_workers
    from numallm.numa.memory import with_available_memory
    from numallm.numa.topology import detect

    opts = engine_options(args)
    topo = with_available_memory(detect(args.root))
    if args.node_memory is not None:
        size = parse_size(args.node_memory, "--node-memory")
        topo = dataclasses.replace(topo, nodes=tuple(
            dataclasses.replace(n, free_bytes=size if n.memory_bytes != 0 else n.free_bytes) for n in topo.nodes))
    workers = placed_workers(topo, args.numa, args.numa_node, args.threads, args.smt)
    gf = upgrade(read_gguf(resolve_model(args.model), header_only=True))  # planned as the engine holds it
    report = dry_run(gf, topo, workers, numa=args.numa, numa_node=args.numa_node,
                     mirror_budget=opts["mirror_budget"], n_ctx=context_size(gf, args.ctx_size, DEFAULT_CTX),
                     kv_type=opts["kv_type"])
    print(json.dumps(report) if args.json else render_dry_run(report))
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _gb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def _nodes(by_node: dict[str, int]) -> str:
    return ", ".join(f"node {n} {_mb(b)}" for n, b in by_node.items()) or "nowhere"


def render_text(r: dict[str, Any]) -> str:
    """The human view of a page report."""
    pt = r["per_token"]
    hp = r["hugepages"]
    lines = [f"{r['model']}: numa {r['mode']}, load mode {r['load_mode']}, context {r['n_ctx']}",
             f"  {r['why']}",
             "Nodes (read back from the kernel):"]
    lines += [f"  node {n['os_index']}: {n['workers']} workers, {_mb(n['weight_bytes'])} weights, "
              f"{_mb(n['kv_bytes'])} KV cache" for n in r["nodes"]]
    lines.append(f"KV cache: {r['kv_bytes_per_token']} B per token (all layers and KV heads)")
    lines.append("Tensor groups (placed; why):")
    lines += [f"  {g['name']:<14} {g['placement']:<10} {_nodes(g['bytes_by_node'])}; {g['why']}" for g in r["groups"]]
    lines.append(f"Per generated token: {_mb(pt['local_bytes'])} of weights read locally, "
                 f"{_mb(pt['remote_bytes'])} remotely (of which the embedding row: "
                 f"{pt['embedding_local_bytes']} B local, {pt['embedding_remote_bytes']} B remote)")
    for what in ("weights", "kv"):
        u = hp[what]
        share = u["huge_bytes"] / u["resident_bytes"] if u["resident_bytes"] else 0.0
        lines.append(f"Huge pages ({what}): {_mb(u['huge_bytes'])} of {_mb(u['resident_bytes'])} resident "
                     f"({share:.0%}); asked: {'yes' if hp['requested'] else 'no'}, THP {hp['thp']}")
    return "\n".join(lines)


def render_dry_run(r: dict[str, Any]) -> str:
    """The human view of a dry run's plan."""
    pt = r["per_token"]
    lines = [f"{r['model']} ({r['architecture']}): {_gb(r['weight_bytes'])} of weights, context {r['n_ctx']} "
             f"(KV cache {_gb(r['kv_bytes'])} a copy); planned without loading (dry run)",
             f"  {r['why']}",
             f"  {'fits' if r['fits'] else 'does not fit: ' + r['memory']}",
             "Nodes:"]
    lines += [f"  node {n['os_index']}: {n['workers']} workers, {_gb(n['weight_bytes'])} weights + "
              f"{_gb(n['kv_bytes'])} KV cache, {_gb(n['free_bytes'])} free" for n in r["nodes"]]
    lines.append("Tensor groups (placed; why):")
    lines += [f"  {g['name']:<14} {g['placement']:<10} {_gb(g['bytes'])}; {g['why']}" for g in r["groups"]]
    if r["modes"]:
        lines.append("Each mode's need per node:")
        for mode, m in r["modes"].items():
            need = ", ".join(f"node {n} {_gb(b)}" for n, b in m["need_bytes"].items())
            mirrored = f" (mirrors {', '.join(m['mirrored'])})" if m["mirrored"] else ""
            lines.append(f"  {mode:<14} {'fits' if m['fits'] else 'does not fit'}{mirrored}: {need}")
    if pt["local_bytes"] is not None:
        lines.append(f"Per generated token: {_mb(pt['read_bytes'])} of weights read, {_mb(pt['local_bytes'])} "
                     f"locally, {_mb(pt['remote_bytes'])} remotely")
    return "\n".join(lines)
