"""Dispatch on the GGML type code that compiles only the types a caller can reach.

Numba types (and so compiles the callees of) every branch of an `if qcode == ...`
chain, even when the caller passes a constant: its branch pruning before typing
only folds constants written in the function itself. `by_type(name, impls)` instead
makes a function f(qcode, ...) = impls[qcode](qcode, ...) whose Numba overload looks
at qcode's type: a literal qcode (a constant, or an argument a caller passed as one,
which Numba keeps literal in the callee's signature) selects impls[qcode] while
typing, so the other types' kernels are never compiled; a runtime qcode gets a chain
over all of them. The impls take qcode too, so the literal travels down to the next
by_type dispatch (e.g. gemm_int8.matmul -> unpack.unpack_strided).

The functions are written out as Python source with the impls' own parameter names
because Numba drops the literal type of an argument passed through *args.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from numba import njit
from numba.core import types
from numba.extending import overload


def _define(source: str, name: str, scope: dict[str, object]) -> Callable[..., object]:
    exec(source, scope)  # noqa: S102 (sources below are built from parameter names and integer codes)
    return scope[name]  # type: ignore[return-value]


def by_type(name: str, impls: dict[int, Callable[..., object]]) -> Callable[..., object]:
    """f(qcode, ...) = impls[qcode](qcode, ...), from Python and from compiled code. The
    impls share one signature whose first parameter is the type code; they are plain
    Python functions (or @njit ones) for Numba to compile."""
    signatures = {tuple(inspect.signature(getattr(f, "py_func", f)).parameters) for f in impls.values()}
    if len(signatures) != 1:
        raise TypeError(f"by_type {name}: the impls' parameter names differ: {sorted(signatures)}")
    params = list(signatures.pop())
    args = ", ".join(params)
    # The chain inlines the impls (small: a call or two each), as a hand-written if/elif
    # chain would hold them; one compiled function per impl took twice as long (58 s
    # instead of 30 s of CPU for every type).
    py_funcs = {code: getattr(impl, "py_func", impl) for code, impl in impls.items()}
    inlined = {id(f): njit(inline="always")(f) for f in py_funcs.values()}
    scope: dict[str, object] = {f"k{code}": inlined[id(f)] for code, f in py_funcs.items()}
    chain_lines = [f"def chain({args}):"]
    for code in sorted(impls):
        chain_lines += [f"    if {params[0]} == {code}:", f"        return k{code}({args})"]
    chain_lines.append(f"    raise ValueError('{name}: unsupported GGML type code')")
    chain = _define("\n".join(chain_lines), "chain", dict(scope))
    # From Python: the chain compiled for every type (tests and references only).
    stub = _define(f"def {name}({args}):\n    return chain({args})", name, {"chain": njit(nogil=True)(chain)})

    def typer(*argtypes):  # type: ignore[no-untyped-def]
        qcode = argtypes[0]
        if isinstance(qcode, types.IntegerLiteral):
            # None (no such type) makes a typing error naming the function and the code.
            return py_funcs.get(qcode.literal_value)
        if isinstance(qcode, types.Integer):
            return chain
        return None

    typer.__signature__ = inspect.signature(stub)  # type: ignore[attr-defined]
    overload(stub, prefer_literal=True, jit_options={"nogil": True})(typer)
    return stub
