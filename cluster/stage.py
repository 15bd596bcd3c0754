"""One pipeline stage: a numallm Engine holding a contiguous range of the model's layers,
run by a Ray actor (cluster/pipeline.py) on whichever machine Ray put it.

The stage detects that machine's topology, places its weights and its layers' KV cache
with its own --numa mode and runs its own pinned workers, as any Engine does; where
several stages share a machine, each first narrows itself to its share of the cores
(numa/share.py). It loads in its constructor, so that Ray's restart of a dead stage
loads it again; a load that fails is kept and raised by ready()."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from numallm.engine.engine import Engine
from numallm.numa.share import core_share
from numallm.numa.topology import detect


class Step(NamedTuple):
    """One forward call as it passes from stage to stage (int32 arrays but `states`)."""

    tokens: np.ndarray     # [n]
    slots: np.ndarray      # [n]
    positions: np.ndarray  # [n]
    rows: np.ndarray       # the rows the last stage returns
    hidden: bool           # their final hidden states instead of logits
    states: np.ndarray | None  # float32 [n, n_embd] into the next stage; None into the first


class Stage:
    """Stage `index`: Engine(layers=layers, **engine_kwargs) on share[0] of share[1] of its machine's cores."""

    def __init__(self, index: int, layers: tuple[int, int], share: tuple[int, int],
                 engine_kwargs: dict[str, Any]) -> None:
        self.index = index
        self.engine: Engine | None = None
        self.error: BaseException | None = None
        try:
            if share[1] > 1:
                os.sched_setaffinity(0, core_share(detect("/"), *share))
            self.engine = Engine(layers=layers, **engine_kwargs)
        except Exception as e:  # noqa: BLE001 - handed to the driver by ready()
            self.error = e

    def ready(self) -> dict[str, Any]:
        """Where this stage runs (host, pid, workers' CPUs), once loaded; its load's error otherwise."""
        if self.engine is None:
            assert self.error is not None
            raise self.error
        return {"host": os.uname().nodename, "pid": os.getpid(),
                "cpus": [s.cpu for s in self.engine.placed.plan.workers], "numa": self.engine.numa}

    def step(self, s: Step) -> Step:
        """Run this stage's layers on s; s with `states` its output (the last stage's: logits)."""
        assert self.engine is not None
        rows = s.rows if self.engine.spec.outputs else np.arange(len(s.tokens), dtype=np.int32)
        out = self.engine.eval_batch(s.tokens, s.slots, s.positions, rows, states=s.states, hidden=s.hidden)
        return s._replace(states=out)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        assert self.engine is not None
        self.engine.copy_prefix(src, dst, n)

    def page_report(self) -> dict[str, Any]:
        assert self.engine is not None
        return self.engine.placed.page_report()
