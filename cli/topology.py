"""`numallm topology`: packages, NUMA nodes, cores and the worker plan."""

from __future__ import annotations

import argparse
import json

from numallm.errors import BadInputError, TopologyError


def run(args: argparse.Namespace) -> int:
    from numallm.numa.report import render_text, to_json
    from numallm.numa.topology import detect
    from numallm.numa.workers import plan_workers

    try:
        topo = detect(args.root)
    except TopologyError as e:
        if args.root == "/":
            raise
        raise BadInputError(str(e)) from None  # a recorded root the user gave us is input
    plan = plan_workers(topo, args.threads, args.smt)
    print(json.dumps(to_json(topo, plan), indent=2) if args.json else render_text(topo, plan))
    return 0
