"""Activation quantization for the SIMD kernels: float32 x -> int8 blocks of 32.

As llama.cpp's q8_0/q8_1: per block of 32, d = max|x| / 127 and q = round(x / d), so
|q| <= 127 (never -128, which the sign trick of vec._dot_s8s8 needs). Kept with it:
xs[b] = d * sum(q) for the weight types with a min or an offset, and the same per 16
elements, xs16, for the K-quants whose scales cover 16 elements. The rounding
error is at most d/2 per element, which gives the SIMD kernels a relative L2 error of
about 5e-3 against float64; tests/test_kernels.py bounds it.

The types whose ggml vec_dot_type is Q8_K (Q4_K, Q5_K, Q6_K, the i-quants but IQ4_NL,
TQ1_0, TQ2_0; their records' q8_k) get llama.cpp's q8_K instead: one scale per 256 elements
(quantize_x_k), in the same arrays, so every kernel reads both kinds alike;
quantized_x_for and quantize_rows_for pick by the type.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numallm.kernels.traits import q8_k
from numallm.kernels.simd.vec import I8, I32, V16F32, _as_i64, _call, _f32_ptr, _is_f32_vector, _splat
from numba import njit, types
from numba.extending import intrinsic

_V16I32 = ir.VectorType(I32, 16)
_V16I8 = ir.VectorType(I8, 16)


# A block's steps as whole 16-lane vectors: Numba's scalar loops (max, rint, int8
# stores) did not vectorise and cost 1.4-1.7 ns per element, about a fifth of a decode
# step of 8 tokens. Same operations per element, so the same bits.

@intrinsic
def _absmax16(typingctx, x, off):  # type: ignore[no-untyped-def]
    """max |x[off:off+16]| (unchecked)."""
    if not _is_f32_vector(x):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = builder.load(_f32_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        v = _call(builder, "llvm.fabs.v16f32", V16F32, [v])
        # A tree of compares and selects (vmaxps): llvm.vector.reduce.fmax keeps NaN
        # semantics by a chain of 15 scalar maxes, the latency that made this slow.
        for half in (8, 4, 2, 1):
            mask = ir.Constant(_V16I32, [i + half if i < half else i for i in range(16)])
            w = builder.shuffle_vector(v, ir.Constant(V16F32, ir.Undefined), mask)
            v = builder.select(builder.fcmp_ordered(">", v, w), v, w)
        return builder.extract_element(v, ir.Constant(I32, 0))
    return types.float32(x, off), codegen


@intrinsic
def _round16(typingctx, x, off, inv, xq, qo):  # type: ignore[no-untyped-def]
    """xq[qo:qo+16] = rint(x[off:off+16] * inv) as int8 (unchecked); returns their sum."""
    if not (_is_f32_vector(x) and isinstance(xq, types.Array) and xq.dtype == types.int8):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        xa, o, s, qa, qo_ = args
        v = builder.load(_f32_ptr(context, builder, sig.args[0], xa, o), align=4)
        v = _call(builder, "llvm.rint.v16f32", V16F32, [builder.fmul(v, _splat(builder, s, V16F32))])
        q = builder.fptosi(v, _V16I32)
        data = context.make_array(sig.args[3])(context, builder, qa).data
        ptr = builder.gep(builder.bitcast(data, I8.as_pointer()), [_as_i64(builder, qo_)])
        builder.store(builder.trunc(q, _V16I8), builder.bitcast(ptr, _V16I8.as_pointer()), align=1)
        return _call(builder, "llvm.vector.reduce.add.v16i32", I32, [q])
    return types.int32(x, off, types.float32, xq, qo), codegen


@njit(nogil=True, cache=True)
def quantize_x(x, xq, xd, xs, xs16):  # type: ignore[no-untyped-def]
    for b in range(x.shape[0] // 32):
        o = 32 * b
        amax = max(_absmax16(x, o), _absmax16(x, o + 16))
        d = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        s0 = _round16(x, o, inv, xq, o)
        s1 = _round16(x, o + 16, inv, xq, o + 16)
        xd[b] = d
        xs16[2 * b] = d * np.float32(s0)
        xs16[2 * b + 1] = d * np.float32(s1)
        xs[b] = d * np.float32(s0 + s1)


@njit(nogil=True, cache=True)
def quantize_rows(X):  # type: ignore[no-untyped-def]
    """(xq, xd, xs, xs16) of every row of X[n, cols], each array with n rows."""
    n, cols = X.shape
    # The rows flattened are blocks in turn: no view per row of X, an array every
    # worker reads at once and would count references to (contended atomics).
    xf = np.ascontiguousarray(X).reshape(-1)
    xq = np.empty(n * cols, np.int8)
    xd = np.empty(n * cols // 32, np.float32)
    xs = np.empty(n * cols // 32, np.float32)
    xs16 = np.empty(n * cols // 16, np.float32)
    quantize_x(xf, xq, xd, xs, xs16)
    return (xq.reshape((n, cols)), xd.reshape((n, cols // 32)), xs.reshape((n, cols // 32)),
            xs16.reshape((n, cols // 16)))


@njit(nogil=True, cache=True)
def quantize_x_k(x, xq, xd, xs, xs16):  # type: ignore[no-untyped-def]
    """llama.cpp's q8_K (quantize_row_q8_K_ref): per 256 elements iscale = 127 / max|x|,
    q = rint(iscale * x), d = 1 / iscale, in quantize_x's arrays: xd gets d once per 32
    elements (8 copies), xs and xs16 d times the sums per 32 and per 16. llama.cpp
    divides by the signed extreme (-127 / x_max): that flips the sign of q and d
    together, so every product d * q, and every dot product, is the same."""
    for b in range(x.shape[0] // 256):
        o = 256 * b
        amax = _absmax16(x, o)
        for c in range(1, 16):
            amax = max(amax, _absmax16(x, o + 16 * c))
        iscale = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        d = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
        for c in range(8):
            s0 = _round16(x, o + 32 * c, iscale, xq, o + 32 * c)
            s1 = _round16(x, o + 32 * c + 16, iscale, xq, o + 32 * c + 16)
            xd[8 * b + c] = d
            xs16[16 * b + 2 * c] = d * np.float32(s0)
            xs16[16 * b + 2 * c + 1] = d * np.float32(s1)
            xs[8 * b + c] = d * np.float32(s0 + s1)


@njit(nogil=True, cache=True)
def quantized_x_for(qcode, x):  # type: ignore[no-untyped-def]
    """(xq, xd, xs, xs16) of x, freshly allocated (cols + 4 * cols / 8 bytes), as the
    weight type qcode pairs it (q8_0 or q8_K)."""
    n = x.shape[0]
    xq = np.empty(n, np.int8)
    xd = np.empty(n // 32, np.float32)
    xs = np.empty(n // 32, np.float32)
    xs16 = np.empty(n // 16, np.float32)
    if q8_k(qcode):
        quantize_x_k(x, xq, xd, xs, xs16)
    else:
        quantize_x(x, xq, xd, xs, xs16)
    return xq, xd, xs, xs16


@njit(nogil=True, cache=True)
def quantize_rows_for(qcode, X):  # type: ignore[no-untyped-def]
    """quantize_rows(X), as the weight type qcode pairs it (q8_0 or q8_K)."""
    if not q8_k(qcode):
        return quantize_rows(X)
    n, cols = X.shape
    xq, xd, xs, xs16 = quantized_x_for(qcode, np.ascontiguousarray(X).reshape(-1))
    return (xq.reshape((n, cols)), xd.reshape((n, cols // 32)), xs.reshape((n, cols // 32)),
            xs16.reshape((n, cols // 16)))
