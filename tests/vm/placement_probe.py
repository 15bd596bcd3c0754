"""Where every --numa mode really puts a model's pages on this machine.

    python3 placement_probe.py OUT.json MODEL.gguf N_CTX [--cli | --budget BYTES] [--modes=mirror,distribute]

Run inside the NUMA VM by tests/test_placement_vm.py (one boot per machine shape):
places the model under each mode in this process (place_model, no kernels compiled)
and records page_report() with the plan's facts, then runs `numallm placement --json`
once as a user would (with --cli). With --budget (a mixture of experts,
tests/test_placement_moe_vm.py): mirror, distribute, and mirror with --mirror-budget
BYTES only. Records raw observations; the tests judge them.
"""

import time

START = time.perf_counter()

# imported after START: their time (long under emulation) is part of what is recorded
import json
import subprocess
import sys
from typing import Any

from numallm.engine import arch
from numallm.engine.gguf_file import read_gguf
from numallm.engine.placing import place_model, placed_workers
from numallm.numa.topology import detect

IMPORTED = time.perf_counter()


def place(gf: Any, spec: Any, mode: str, n_ctx: int, numa_node: int | None = None,
          mirror_budget: int | None = None) -> dict[str, Any]:
    topo = detect("/")
    workers = placed_workers(topo, mode, numa_node, None, False)
    t0 = time.perf_counter()
    placed = place_model(gf, spec, topo, workers, numa=mode, numa_node=numa_node, mirror_budget=mirror_budget,
                         n_ctx=n_ctx)
    try:
        seconds = time.perf_counter() - t0
        plan = placed.plan
        report = placed.page_report()
        return {"report": report, "seconds": seconds, "report_seconds": time.perf_counter() - t0 - seconds, "plan_nodes": list(plan.nodes),
                "homes": list(plan.homes), "worker_nodes": [s.node for s in plan.workers],
                "kv_heads": [[n, list(h)] for n, h in plan.kv_heads],
                "planned_weight_bytes": plan.weight_bytes_per_node(),
                "matrix_bytes": placed.weights.matrix_bytes, "kv_nbytes": placed.kv_nbytes}
    finally:
        placed.close()


def main() -> None:
    out, model, n_ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gf = read_gguf(model)
    spec = arch.describe(gf.metadata, model)
    last = detect("/").nodes[-1].os_index
    seen: dict[str, Any] = {"n_nodes": len(detect("/").nodes), "modes": {}, "import_seconds": IMPORTED - START}
    if "--budget" in sys.argv[4:]:
        budget = int(sys.argv[sys.argv.index("--budget") + 1])
        for mode in ("mirror", "distribute"):
            seen["modes"][mode] = place(gf, spec, mode, n_ctx)
        seen["modes"]["budget"] = place(gf, spec, "mirror", n_ctx, mirror_budget=budget)
        _save(out, seen)
        return
    asked = next((a.split("=", 1)[1].split(",") for a in sys.argv[4:] if a.startswith("--modes=")), None)
    for mode in ("mirror", "distribute", "interleave", "none", "auto"):
        if asked is None or mode in asked:
            seen["modes"][mode] = place(gf, spec, mode, n_ctx)
    if asked is None or "isolate" in asked:
        seen["modes"]["isolate"] = place(gf, spec, "isolate", n_ctx, numa_node=last)
    if "--cli" in sys.argv[4:]:  # a second Python start: seconds under emulation, so only when asked
        cli = subprocess.run([sys.executable, "-m", "numallm", "placement", "-m", model, "--numa", "distribute",
                              "-c", str(n_ctx), "--json"], capture_output=True, text=True, check=False)
        seen["cli"] = {"returncode": cli.returncode, "stdout": cli.stdout, "stderr": cli.stderr[-2000:]}
    _save(out, seen)


def _save(out: str, seen: dict[str, Any]) -> None:
    seen["seconds"] = time.perf_counter() - START
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
