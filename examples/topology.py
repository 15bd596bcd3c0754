"""Print this machine's topology and the worker plan, as `numallm topology` does.

    python3 examples/topology.py [SYSFS_ROOT]
"""

import sys

from numallm.numa.report import render_text
from numallm.numa.topology import detect
from numallm.numa.workers import plan_workers

topo = detect(sys.argv[1] if len(sys.argv) > 1 else "/")
print(render_text(topo, plan_workers(topo)))
