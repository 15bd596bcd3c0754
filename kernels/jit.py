"""Numba-callable entry points, dispatching on the integer GGML type code.

Call these from your own `@njit(nogil=True)` code (e.g. a whole token per pinned
worker): `qcode` is `int(GGMLQuantizationType)`, `w` a packed buffer from
numallm.kernels.pack, every other argument as in numallm.kernels.matvec & co.
Each entry point's path per type comes from the type's record (kernels/traits.py):
matvec of quantized types runs the row dots of drivers/rows.py (activation quantized
to int8 blocks, drivers/actq.py), of the float types the float row dot of
families/floats.py; matmul of a tiled type takes every batch through its tiles, of
the other quantized types GEMM_MIN_TOKENS or more tokens through the int8 tile GEMM
(drivers/gemm_int8.py, on the same int8 quantization of x) and fewer through the row
dots, of float weights the float32 micro-kernel (drivers/gemm_float.py). The
instruction set is the one Numba compiles for (simd/cpu.py), so a cached build never
runs on a CPU it was not built for.
Each call checks its shapes and row range once (ValueError) and then reads memory
unchecked.

Compiling only the types a model uses. `matvec`, `matmul` and `get_rows` compile
every type's kernels, because the type is a runtime value. `kernel_set(qtypes)`
makes a KernelSet, whose Numba type names its types; a cached caller that takes it
as an argument and calls `matvec_in(ks, qcode, ...)` (likewise `matmul_in`,
`get_rows_in`) gets a dispatch over those types only, each branch passing its type
code on as a constant, which every dispatch below selects on while typing
(kernels/drivers/by_type.py): compiling the caller compiles only those types' kernels, and
Numba's cache keys the caller's machine code by the set (part of its signature).
`kernels_for(qcode)` gives Python callers the same for one type. (Compile times
with and without: benchmarks/README.md.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, NamedTuple

import numpy as np
from numallm.kernels.drivers import gemm_float, gemm_int8
from numallm.kernels.drivers import rows as row_kernels
from numallm.kernels.drivers.by_type import by_type
from numallm.kernels.drivers.decode import get_rows as decode_rows
from numallm.kernels.families.floats import rows_float
from numallm.kernels.traits import CODES, TILED, TRAITS, TypeTraits, geometry
from numba import njit
from numba.core import types
from numba.core.imputils import lower_constant
from numba.extending import (
    NativeValue,
    models,
    overload,
    register_model,
    typeof_impl,
    unbox,
)

# From this many tokens on, unpacking a tile of rows once (drivers/gemm_int8.py) beats
# the int8 row kernels run once per token (drivers/rows.py): the unpack costs what
# 20-40 tokens through the row kernels do (benchmarks/README.md). Float weights always
# take the tile GEMM; the tiled types never do (their tile kernel takes any number of
# tokens).
GEMM_MIN_TOKENS = 32


def same_path(n: int, total: int) -> bool:
    """Do n tokens of a call of `total` tokens take the kernels they take in a call of
    their own, and so get the same bits? Yes when both counts are on the same side of
    GEMM_MIN_TOKENS (the row kernels and the GEMM each compute every token on its own)."""
    return (n >= GEMM_MIN_TOKENS) == (total >= GEMM_MIN_TOKENS)


@njit(nogil=True, cache=True)
def _check_geometry(bs, ts, w, rows, cols, r0, r1):  # type: ignore[no-untyped-def]
    if bs == 0:
        raise ValueError("unsupported GGML type code")
    if cols <= 0 or cols % bs != 0:
        raise ValueError("cols is not a positive multiple of the type's block size")
    if w.shape[0] < rows * (cols // bs) * ts:
        raise ValueError("weight buffer is smaller than rows * row bytes")
    if r0 < 0 or r1 < r0 or r1 > rows:
        raise ValueError("row range [r0, r1) is not inside [0, rows)")


@njit(inline="always", cache=True)
def _check(qcode, w, rows, cols, r0, r1):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)  # plain integers: the check is compiled once, not per type
    _check_geometry(bs, ts, w, rows, cols, r0, r1)


# The paths of each entry point, by type (kernels/drivers/by_type.py compiles them per type).

def _matvec_float(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, r0, r1)
    _check_matvec(cols, x, out, r1)
    rows_float(qcode, w, cols, x, out, r0, r1)


def _matvec_quant(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, r0, r1)
    _check_matvec(cols, x, out, r1)
    row_kernels.matvec(qcode, w, rows, cols, x, out, r0, r1)


@njit(inline="always", cache=True)
def _check_matvec(cols, x, out, r1):  # type: ignore[no-untyped-def]
    if x.shape[0] != cols or out.shape[0] < r1:
        raise ValueError("matvec: x must have cols elements and out at least r1")


@njit(inline="always", cache=True)
def _check_matmul(cols, X, out, r1):  # type: ignore[no-untyped-def]
    if X.shape[1] != cols or out.shape[0] != X.shape[0] or out.shape[1] < r1:
        raise ValueError("matmul: X must be [n, cols] and out [n, >= r1]")


def _matmul_float(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, r0, r1)
    _check_matmul(cols, X, out, r1)
    gemm_float.matmul(qcode, w, rows, cols, X, out, r0, r1)


def _matmul_quant(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, r0, r1)
    _check_matmul(cols, X, out, r1)
    if X.shape[0] < GEMM_MIN_TOKENS:
        row_kernels.matmul(qcode, w, rows, cols, X, out, r0, r1)
    else:
        gemm_int8.matmul(qcode, w, rows, cols, X, out, r0, r1)


def _matmul_rows(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, r0, r1)
    _check_matmul(cols, X, out, r1)
    row_kernels.matmul(qcode, w, rows, cols, X, out, r0, r1)


def _matmul_tiled(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, r0, r1)
    _check_matmul(cols, X, out, r1)
    row_kernels.matmul_tiled(qcode, w, rows, cols, X, out, r0, r1)


def _get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    _check(qcode, w, rows, cols, 0, rows)
    if out.shape[0] != ids.shape[0] or out.shape[1] != cols:
        raise ValueError("get_rows: out must be [len(ids), cols]")
    decode_rows(qcode, w, rows, cols, ids, out)


_matvec = by_type("matvec", {t.code: _matvec_float if t.is_float else _matvec_quant for t in TRAITS})
def _matmul_path(t: TypeTraits) -> Callable[..., None]:
    """The float GEMM, the tiles, the int8 GEMM from GEMM_MIN_TOKENS tokens on, or the row
    dots alone (a type without a GEMM form)."""
    if t.is_float:
        return _matmul_float
    if t.layout == TILED:
        return _matmul_tiled
    return _matmul_quant if t.unpack else _matmul_rows


_matmul = by_type("matmul", {t.code: _matmul_path(t) for t in TRAITS})
_get_rows_by_type = by_type("get_rows", dict.fromkeys(CODES, _get_rows))
_OPS = {"matvec": _matvec, "matmul": _matmul, "get_rows": _get_rows_by_type}
# Written out: Numba drops the literal type of an argument passed through *args.
_ARGS = {"matvec": "w, rows, cols, x, out, r0, r1", "matmul": "w, rows, cols, X, out, r0, r1",
         "get_rows": "w, rows, cols, ids, out"}


# ---- type sets --------------------------------------------------------------------

class KernelSet:
    """A set of GGML type codes that Numba sees in the argument's type (see the module
    docstring). Build it with kernel_set()."""

    def __init__(self, codes: Iterable[int]) -> None:
        self.codes = tuple(sorted({int(c) for c in codes}))
        unknown = set(self.codes) - set(CODES)
        if unknown:
            raise ValueError(f"kernel_set: GGML type codes {sorted(unknown)} have no kernels")

    def __repr__(self) -> str:
        return f"KernelSet{self.codes}"


def kernel_set(qtypes: Iterable[int]) -> KernelSet:
    """The KernelSet of these GGML types (GGMLQuantizationType or int codes)."""
    return KernelSet(qtypes)


class KernelSetType(types.Dummy):
    def __init__(self, codes: tuple[int, ...]) -> None:
        self.codes = codes
        super().__init__(name=f"KernelSet{codes}")


def type_only(cls: type, dummy: type[types.Dummy], numba_type: Callable[[Any], types.Dummy]) -> None:
    """Make Numba type an instance of cls as numba_type(instance), a `dummy` type that
    holds what the instance says (KernelSet's codes, engine/paths.py's flags) and
    nothing at run time."""
    register_model(dummy)(models.OpaqueModel)
    typeof_impl.register(cls)(lambda val, c: numba_type(val))
    unbox(dummy)(lambda typ, obj, c: NativeValue(c.context.get_dummy_value()))
    lower_constant(dummy)(lambda context, builder, ty, pyval: context.get_dummy_value())


type_only(KernelSet, KernelSetType, lambda val: KernelSetType(val.codes))


@cache
def _dispatch(op: str, codes: tuple[int, ...]) -> Callable[..., None]:
    """`op` over `codes` as Python source, each branch calling the by_type dispatch with
    its code as a constant (Numba types every branch it sees, so only these)."""
    args = _ARGS[op]
    lines = [f"def dispatch(ks, qcode, {args}):"]
    for c in codes:
        lines += [f"    if qcode == {c}:", f"        return op({c}, {args})"]
    lines.append("    raise ValueError('GGML type code not in the kernel set')")
    scope = {"op": _OPS[op]}
    exec("\n".join(lines), scope)  # noqa: S102 (source built above from integer codes only)
    return scope["dispatch"]  # type: ignore[return-value]


def matvec_in(ks, qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[r0:r1] = W[r0:r1] @ x, for a type of the KernelSet ks (compiled code only)."""
    raise NotImplementedError("call matvec_in from Numba-compiled code")


def matmul_in(ks, qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[:, r0:r1] = X @ W[r0:r1].T, for a type of the KernelSet ks (compiled code only)."""
    raise NotImplementedError("call matmul_in from Numba-compiled code")


def get_rows_in(ks, qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    """out[i] = W[ids[i]] as float32, for a type of the KernelSet ks (compiled code only)."""
    raise NotImplementedError("call get_rows_in from Numba-compiled code")


def _overload_dispatch(stub: Callable[..., None], op: str) -> None:
    def typer(ks, qcode, *args):  # type: ignore[no-untyped-def]
        if isinstance(ks, KernelSetType):
            return _dispatch(op, ks.codes)
        return None
    typer.__signature__ = inspect.signature(stub)  # type: ignore[attr-defined]
    overload(stub, jit_options={"nogil": True})(typer)


_overload_dispatch(matvec_in, "matvec")
_overload_dispatch(matmul_in, "matmul")
_overload_dispatch(get_rows_in, "get_rows")


class TypeKernels(NamedTuple):
    """matvec, matmul and get_rows of one type: the arguments of the functions below
    without qcode."""
    matvec: Callable[..., None]
    matmul: Callable[..., None]
    get_rows: Callable[..., None]


@cache
def kernels_for(qcode: int) -> TypeKernels:
    """Entry points compiled (and cached) for one GGML type alone, for Python callers:
    a call compiles that type's kernels only, not every type's as matvec & co. do."""
    code = int(qcode)  # a closure cell: Numba reads it as a constant (a literal type)

    @njit(nogil=True, cache=True)
    def matvec(w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
        _matvec(code, w, rows, cols, x, out, r0, r1)

    @njit(nogil=True, cache=True)
    def matmul(w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
        _matmul(code, w, rows, cols, X, out, r0, r1)

    @njit(nogil=True, cache=True)
    def get_rows(w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
        _get_rows_by_type(code, w, rows, cols, ids, out)

    return TypeKernels(matvec, matmul, get_rows)


@njit(nogil=True, cache=True)
def matvec(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[r0:r1] = W[r0:r1] @ x, for any supported type."""
    _matvec(qcode, w, rows, cols, x, out, r0, r1)


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[:, r0:r1] = X @ W[r0:r1].T for X float32[n, cols], out float32[n, rows]."""
    _matmul(qcode, w, rows, cols, X, out, r0, r1)


@njit(nogil=True, cache=True)
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    """out[i] = W[ids[i]] as float32."""
    _get_rows_by_type(qcode, w, rows, cols, ids, out)


@njit(nogil=True, cache=True)
def dequantize(qcode, w, rows, cols):  # type: ignore[no-untyped-def]
    """The whole weight as float32[rows, cols]."""
    out = np.empty((rows, cols), np.float32)
    get_rows(qcode, w, rows, cols, np.arange(rows), out)
    return out
