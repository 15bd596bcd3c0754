"""Several processes on one machine, each with its own part of it: pipeline stages
(cluster/) that share a machine each take a share of its allowed cores, whole nodes
where the count allows, so their pinned workers never meet."""

from numallm.errors import TopologyError
from numallm.numa.split import part
from numallm.numa.topology import Topology


def core_share(topo: Topology, index: int, count: int) -> frozenset[int]:
    """The allowed CPUs of share `index` of `count`: the allowed cores in node order,
    cut into `count` contiguous runs (a node's cores stay together where they can)."""
    allowed = topo.allowed_cpus
    cores = [c for c in topo.cores if allowed.intersection(c.pus)]
    cores.sort(key=lambda c: (min((n for n in (topo.node_of_cpu(p) for p in c.pus) if n is not None),
                                  default=-1), c.index))
    if count > len(cores):
        raise TopologyError(f"{count} pipeline stages share a machine with {len(cores)} allowed cores; "
                            "give each stage at least one core (fewer stages, or more machines)")
    lo, hi = part(len(cores), 1, index, count)
    return frozenset(p for c in cores[lo:hi] for p in c.pus if p in allowed)
