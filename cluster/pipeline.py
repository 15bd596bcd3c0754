"""The driver of a pipeline: an Engine whose forward calls run on Ray stage actors.

It reads the model's metadata (tokenizer, chat template, hyperparameters), cuts the
layers into stages by bytes, starts one Stage actor per stage in a Ray placement group
(spread: one per Ray node where there are enough; the last stage on this machine, so
that logits never cross the network) and chains their step() calls: each stage's call
takes the previous one's result by reference, so a call's int32 tokens, slots and
positions and float32 hidden states [tokens, n_embd] go from stage to stage through
Ray's object store (shared memory on one machine, Ray's transfer between machines),
never through this process, and the last stage's logits come back here. Calls run in
the order they are begun, so several may be in flight, each stage working on one.
Everything above the forward call (generate, chat, the batching scheduler, prefix
sharing) is the Engine's.

Not Ray Compiled Graphs: their channels cost a quarter of a plain call's hop, but they
busy-poll, the driver while it waits and every stage while idle, and with a pinned
worker on every core that made the pipeline several times slower
(benchmarks/README.md).

A stage that dies (its process killed, its machine gone) fails the call in flight with
UnavailableError, and every call after it until Ray has restarted the actor (which
loads its layers again); down() names the stage meanwhile. The restarted stage's KV cache is empty: the batching scheduler fails every
running sequence and forgets the prefixes its slots held.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from numallm.cluster.stage import Stage, Step
from numallm.engine.embedding import model_pooling
from numallm.engine.engine import Engine, Stats
from numallm.engine.kv_cache import KV_ITEMSIZE
from numallm.engine.model_load import open_model
from numallm.engine.stages import split_layers, stage_bytes
from numallm.engine.weights import check_model
from numallm.errors import BadInputError, NumallmError, ResourceError, UnavailableError
from numallm.kernels import batch_invariant

log = logging.getLogger("numallm.cluster")

PLACE_TIMEOUT_S = 60.0  # for the cluster to find a CPU for every stage
PING_TIMEOUT_S = 2.0    # a stage that does not answer in this long is down


class PipelineEngine(Engine):
    """The model's layers in n_stages Ray actors; the Engine's API otherwise."""

    def __init__(self, n_stages: int, model: str | None = None, *, numa: str = "auto", load_mode: str = "auto",
                 threads: int | None = None, ctx_size: int | None = None, kv_type: str = "f16", smt: bool = False,
                 n_slots: int = 1, numa_node: int | None = None, hugepages: bool = True,
                 mirror_budget: int | str | None = None, verbose: bool = False) -> None:
        t0 = time.perf_counter()
        self.verbose = verbose
        self._lock = threading.RLock()
        self._pool = None  # Engine.close's: no workers here, nothing placed
        self.placed = None  # type: ignore[assignment]
        self._worker_memory = None
        self._stages: list[Any] = []
        self._pg: Any = None
        self._down: str | None = None
        self._recovery: threading.Thread | None = None
        opened = open_model(model, ctx_size=ctx_size, n_slots=n_slots,
                            check_file=functools.partial(self._check_file, ctx_size))
        self.path, self.spec, self.hparams = opened.path, opened.spec, opened.spec.hparams
        self.n_ctx, self.n_slots = opened.n_ctx, n_slots
        self.pooling = model_pooling(opened.gf.metadata)
        self.chat_template = self._load_chat_template(opened.gf.metadata)
        self.numa = numa
        hp = self.hparams
        if kv_type not in KV_ITEMSIZE:
            raise BadInputError(f"cache type {kv_type!r} is not supported (use one of {', '.join(KV_ITEMSIZE)})")
        self._qtypes = frozenset(t.qtype for t in check_model(opened.gf, self.spec).all_mats)
        kv_layer = 2 * n_slots * self.n_ctx * hp.n_head_kv * hp.head_dim * KV_ITEMSIZE[kv_type]
        self.stage_layers = split_layers(*stage_bytes(opened.gf, self.spec, kv_layer), n_stages)
        # Each stage resolves the model itself: a path must be the same on every machine.
        kwargs = dict(model=model, numa=numa, load_mode=load_mode, threads=threads, ctx_size=self.n_ctx,
                      kv_type=kv_type, smt=smt, n_slots=n_slots, numa_node=numa_node, hugepages=hugepages,
                      mirror_budget=mirror_budget, verbose=verbose)
        try:
            self._start(kwargs)
        except BaseException:
            self.close()
            raise
        self.stats = Stats(load_s=time.perf_counter() - t0)
        if verbose:
            log.info("%d stages in %.2f s: %s", n_stages, self.stats.load_s, "; ".join(
                f"{self._name(i)} on {w['host']} CPUs {','.join(map(str, w['cpus']))}"
                for i, w in enumerate(self.where)))

    # -- starting and restarting ---------------------------------------------------------

    def _start(self, kwargs: dict[str, Any]) -> None:
        if not ray.is_initialized():
            # An existing cluster (RAY_ADDRESS, or `ray start` on this machine), else a local one.
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        n = len(self.stage_layers)
        self._pg = placement_group([{"CPU": 1}] * n, strategy="SPREAD")
        if not self._pg.wait(PLACE_TIMEOUT_S):
            raise ResourceError(f"the Ray cluster found no CPU for each of {n} pipeline stages in "
                                f"{PLACE_TIMEOUT_S:.0f} s (`ray status` shows what it has)")
        bundles = self._bundle_order()
        actor = ray.remote(Stage)
        for i, (bundle, share) in enumerate(bundles):
            strategy = PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=bundle)
            self._stages.append(actor.options(num_cpus=1, max_restarts=-1, max_task_retries=0,
                                              scheduling_strategy=strategy).remote(i, self.stage_layers[i], share, kwargs))
        self.where = self._ready()

    def _bundle_order(self) -> list[tuple[int, tuple[int, int]]]:
        """Stage i's (bundle, its share of the machine's cores): stages of one machine
        together, this machine's last; stages on one machine split its cores."""
        nodes = placement_group_table(self._pg)["bundles_to_node_id"]
        here = ray.get_runtime_context().get_node_id()
        order = sorted(nodes, key=lambda b: (nodes[b] == here, nodes[b], b))
        out = []
        for b in order:
            mates = [c for c in order if nodes[c] == nodes[b]]
            out.append((b, (mates.index(b), len(mates))))
        return out

    def _ready(self) -> list[dict[str, Any]]:
        """Each stage's ready(), waiting for its load; a stage's load error as this machine's own."""
        where = []
        for i, stage in enumerate(self._stages):
            try:
                where.append(ray.get(stage.ready.remote()))
            except RayTaskError as e:
                cause = e.cause
                if isinstance(cause, NumallmError):
                    raise type(cause)(f"pipeline stage {i}: {cause}") from None
                raise NumallmError(f"pipeline stage {i} failed to load: {type(cause).__name__}: {cause}") from None
        return where

    def _name(self, i: int) -> str:
        a, b = self.stage_layers[i]
        return f"stage {i} of {len(self._stages)} (layers {a}-{b - 1})"

    def _failed(self, error: BaseException) -> UnavailableError:
        """Note which stages are down, start waiting for Ray to restart them; the error to raise."""
        if self._down is not None:  # another call in flight saw it first
            return UnavailableError(f"{self._down}; retry once GET /health says ok")
        dead = getattr(error, "actor_id", None)  # Ray's actor errors name the actor
        down = [i for i, stage in enumerate(self._stages) if stage._actor_id.hex() == dead]
        for i, stage in enumerate(self._stages if not down else ()):
            try:  # a stage that answers from a new process was restarted already
                if ray.get(stage.ready.remote(), timeout=PING_TIMEOUT_S)["pid"] != self.where[i]["pid"]:
                    down.append(i)
            except RayError:
                down.append(i)
        names = ", ".join(self._name(i) for i in down) or "a pipeline stage"
        self._down = f"{names} down ({type(error).__name__}); Ray is restarting it"
        log.error("%s", self._down)
        self._recovery = threading.Thread(target=self._recover, name="numallm-pipeline-recovery", daemon=True)
        self._recovery.start()
        return UnavailableError(f"{names} went down; retry once GET /health says ok")

    def _recover(self) -> None:
        """Wait for every stage to answer (Ray restarts the dead one, which loads again)."""
        while self._stages:
            try:
                self.where = self._ready()
                break
            except (RayError, NumallmError) as e:
                log.warning("waiting for the pipeline's stages: %s", e)
                time.sleep(1.0)
        log.warning("the pipeline is whole again")
        self._down = None

    def down(self) -> str | None:
        return self._down

    # -- the forward pass ------------------------------------------------------------------

    def _eval(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, rows: np.ndarray,
              hidden: bool = False, routing: np.ndarray | None = None, states: np.ndarray | None = None) -> np.ndarray:
        if routing is not None:
            raise BadInputError("eval_batch: a pipeline cannot replay a routing (run the model in one process)")
        return self._begin(Step(tokens, slots, positions, rows, hidden, None))()

    @property
    def depth(self) -> int:  # type: ignore[override]
        return len(self._stages)

    def submit_batch(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                     logits_rows: np.ndarray) -> Callable[[], np.ndarray]:
        tokens, slots, positions, logits_rows, _, _ = self._checked_batch(tokens, slots, positions, logits_rows,
                                                                          None, None)
        with self._lock:
            return self._begin(Step(tokens, slots, positions, logits_rows, False, None))

    def _begin(self, step: Step) -> Callable[[], np.ndarray]:
        """Send `step` through the stages; the function returned waits for its output.
        Calls run in the order they are begun, each stage on one at a time."""
        if not self._stages:
            raise NumallmError("this Engine is closed; create a new one")
        if self._down is not None:
            raise UnavailableError(f"{self._down}; retry once GET /health says ok")
        ref: Any = step
        for stage in self._stages:
            ref = stage.step.remote(ref)

        def result() -> np.ndarray:
            try:
                return ray.get(ref).states  # no time limit: a long prefill is no fault
            except RayTaskError as e:
                if isinstance(e.cause, RayError):  # a later stage's input was lost with an earlier stage
                    raise self._failed(e.cause) from None
                raise e.cause from None  # the stage's own error; the stages are fine
            except RayError as e:
                raise self._failed(e) from None
        return result

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Engine.copy_prefix on every stage. A stage found down here is noted, not
        raised: the next forward call fails, and the scheduler forgets every prefix then."""
        if not (0 <= src < self.n_slots and 0 <= dst < self.n_slots and 0 <= n <= self.n_ctx):
            raise BadInputError(f"copy_prefix: slots must be in [0, {self.n_slots}) and n in [0, {self.n_ctx}]")
        if self._down is not None:
            return
        with self._lock:
            try:
                ray.get([stage.copy_prefix.remote(src, dst, n) for stage in self._stages])
            except RayError as e:
                self._failed(e)

    @property
    def batch_invariant(self) -> bool:
        return batch_invariant(self._qtypes)

    def page_reports(self) -> list[dict[str, Any]]:
        """Each stage's where (host, pid, CPUs) and page report (Engine.placed.page_report)."""
        reports = ray.get([stage.page_report.remote() for stage in self._stages])
        return [{"stage": i, "layers": list(self.stage_layers[i]), **self.where[i], **r}
                for i, r in enumerate(reports)]

    def close(self) -> None:
        """End the stage actors; safe to call twice."""
        with self._lock:
            stages, self._stages = self._stages, []
            for stage in stages:
                ray.kill(stage, no_restart=True)
            if self._pg is not None:
                remove_placement_group(self._pg)
                self._pg = None
