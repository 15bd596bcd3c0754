"""`numallm placement`: load and place a model (no kernels compiled, so it runs in the
NUMA VM on real models too), then report where the pages really are."""

from __future__ import annotations

import argparse
import json
from typing import Any

from numallm.cli.options import engine_options
from numallm.errors import BadInputError


def run(args: argparse.Namespace) -> int:
    from numallm.engine.model_load import load_model  # numpy and the loader: only when it runs

    if args.root != "/":
        raise BadInputError("numallm placement places memory on this machine: --root does not apply")
    loaded = load_model(**engine_options(args))
    try:
        report = loaded.placed.page_report()
    finally:
        loaded.placed.close()
    report = {"model": str(loaded.path), "n_ctx": loaded.n_ctx, **report}
    print(json.dumps(report) if args.json else render_text(report))
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


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
    lines.append("Tensor groups:")
    lines += [f"  {g['name']:<10} {_nodes(g['bytes_by_node'])}" for g in r["groups"]]
    lines.append(f"Per generated token: {_mb(pt['local_bytes'])} of weights read locally, "
                 f"{_mb(pt['remote_bytes'])} remotely (of which the embedding row: "
                 f"{pt['embedding_local_bytes']} B local, {pt['embedding_remote_bytes']} B remote)")
    for what in ("weights", "kv"):
        u = hp[what]
        share = u["huge_bytes"] / u["resident_bytes"] if u["resident_bytes"] else 0.0
        lines.append(f"Huge pages ({what}): {_mb(u['huge_bytes'])} of {_mb(u['resident_bytes'])} resident "
                     f"({share:.0%}); asked: {'yes' if hp['requested'] else 'no'}, THP {hp['thp']}")
    return "\n".join(lines)
