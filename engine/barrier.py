"""A spin barrier that runs inside Numba code, without the GIL.

Each pinned worker runs a whole forward pass in one compiled function and meets the
others here between the steps that need everyone's output. Dispatching every op from
Python cost about 120 us per sync; this costs well under a microsecond when the
workers arrive together. A worker that waits long goes to sleep on a futex instead:
when the machine has more runnable threads than CPUs (a server's event loop, its
clients, other processes), a worker spinning on one CPU would keep the thread its
peer is waiting for from running there, so every preempted worker would cost its
peers the same time again.

The state is an int64 array (arrival count, generation, sleepers): a sense-reversing
barrier built from sequentially consistent atomic add and load, written as LLVM IR
through numba.extending.intrinsic (Numba has no atomics of its own on the CPU). The
futex word is the low half of the generation; a waiter counts itself in `sleepers`
before it sleeps, and the last arrival wakes the sleepers only when there are any.
Either the last arrival sees the count (and wakes) or the waiter's FUTEX_WAIT sees
the new generation (and returns): both are seq_cst, so no wake-up is lost.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
SPINS_BEFORE_SLEEP = 20000  # a few hundred microseconds of `pause`: skewed arrivals stay awake
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower(), -1)
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129


def _element_pointer(context, builder, arrty, arr, idx):  # type: ignore[no-untyped-def]
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx], wraparound=False)


@intrinsic
def atomic_add(typingctx, arr, idx, val):  # type: ignore[no-untyped-def]
    """arr[idx] += val atomically; returns the old value (int64 arrays)."""
    sig = types.int64(arr, types.intp, types.int64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """arr[idx], read atomically (int64 arrays)."""
    sig = types.int64(arr, types.intp)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)

    return sig, codegen


@intrinsic
def atomic_store(typingctx, arr, idx, val):  # type: ignore[no-untyped-def]
    """arr[idx] = val atomically (int64 arrays)."""
    sig = types.void(arr, types.intp, types.int64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cpu_relax(typingctx):  # type: ignore[no-untyped-def]
    """The spin-wait hint: `pause` on x86, nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sched_yield(typingctx):  # type: ignore[no-untyped-def]
    """libc sched_yield(), resolved by name so Numba's cache stays valid across runs."""
    sig = types.int32()

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        return builder.call(fn, [])

    return sig, codegen


@intrinsic
def futex(typingctx, arr, idx, op, val):  # type: ignore[no-untyped-def]
    """syscall(SYS_futex, &low 32 bits of arr[idx], op, val, NULL): FUTEX_WAIT sleeps
    while that word equals val; FUTEX_WAKE wakes up to val sleepers."""
    sig = types.int64(arr, types.intp, types.int64, types.int64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64], var_arg=True)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        word = builder.bitcast(ptr, ir.IntType(32).as_pointer())  # little-endian: the low half
        val32 = builder.trunc(args[3], ir.IntType(32))
        null = ir.Constant(ir.IntType(8).as_pointer(), None)
        return builder.call(fn, [ir.Constant(i64, _SYS_FUTEX), word, builder.trunc(args[2], ir.IntType(32)),
                                 val32, null])

    return sig, codegen


def new_barrier() -> np.ndarray:
    """Fresh barrier state for one group of workers."""
    return np.zeros(3, np.int64)


@njit(nogil=True, cache=True)
def barrier_wait(state, n_workers):  # type: ignore[no-untyped-def]
    """Block until all n_workers have called this with the same state."""
    if n_workers <= 1:
        return
    gen = atomic_load(state, 1)
    if atomic_add(state, 0, 1) == n_workers - 1:
        atomic_store(state, 0, 0)
        atomic_add(state, 1, 1)
        if atomic_load(state, 2) > 0:
            futex(state, 1, _FUTEX_WAKE_PRIVATE, 1 << 30)
        return
    spins = 0
    while atomic_load(state, 1) == gen:
        cpu_relax()
        spins += 1
        if spins >= SPINS_BEFORE_SLEEP:
            if _SYS_FUTEX < 0:  # no futex number known for this machine: yield instead
                sched_yield()
                spins = 0
                continue
            atomic_add(state, 2, 1)
            while atomic_load(state, 1) == gen:
                futex(state, 1, _FUTEX_WAIT_PRIVATE, gen)
            atomic_add(state, 2, -1)
