"""Which optional steps of the forward pass a model takes, as a Numba type.

Numba types, and so compiles, every call in a function whether a model ever takes it
or not: a dense model's forward pass would carry the mixture-of-experts FFN and
multi-head latent attention with it, a fifth of its compile (benchmarks/README.md,
start-up). `Paths` names the steps a model takes in its Numba type (like
kernels.KernelSet for the weight types); a step made with `step_if` and called as
step(paths, args) from the compiled pass compiles to fn(*args) for a model with the
flag and to a constant for the others. Numba's cache keys the pass by the Paths too
(part of its signature).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from numba.core import types
from numba.extending import overload

from numallm.engine.arch.spec import HParams
from numallm.kernels.jit import type_only


@dataclass(frozen=True)
class Paths:
    """The optional steps of a model's forward pass."""

    moe: bool  # a layer routes its FFN through experts
    mla: bool  # multi-head latent attention

    @classmethod
    def of(cls, hp: HParams) -> Paths:
        return cls(moe=hp.n_expert > 0, mla=hp.kv_lora_rank > 0)


class PathsType(types.Dummy):
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        super().__init__(name=f"Paths(moe={paths.moe}, mla={paths.mla})")


type_only(Paths, PathsType, PathsType)


def step_if(flag: str, fn: Callable[..., object], skipped: object = None) -> Callable[..., object]:
    """step(paths, args): fn(*args) where the model's Paths has `flag`, else `skipped`
    (fn's result type; never returned at run time where the caller checks the flag too)."""

    def step(paths, args):  # type: ignore[no-untyped-def]
        raise NotImplementedError(f"call {fn.__name__} through step_if from compiled code")

    @overload(step, jit_options={"nogil": True})
    def _typer(paths, args):  # type: ignore[no-untyped-def]
        if not isinstance(paths, PathsType):
            return None
        if getattr(paths.paths, flag):
            return lambda paths, args: fn(*args)
        return lambda paths, args: skipped

    return step
