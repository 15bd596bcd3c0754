"""Row dots of TQ2_0 and TQ1_0 (their records' `dot`): a super-block's 256 ternary
digits t decoded in vectors as the unsigned t + 1 (0-2, or a multiple of it), dotted
with the q8_K activation by _dot_u8s8 (one vpdpbusd per 32 elements with VNNI), and
the + 1 taken off once per super-block through the activation's sums (xs), as
llama.cpp does with q8_K's bsums: no sign trick per element.

TQ1_0 stores 5 (or 4) digits per byte b as a fraction of 3**5: digit n is the top
base-3 digit of u_n = 3**n b mod 256, floor(3 u_n / 256). Since 3 u_n = 256 digit +
u_{n+1}, sum(digit x) = (3 sum(u_n x) - sum(u_{n+1} x)) / 256 exactly: with VNNI (or
plain LLVM) two dots of bytes we have anyway (u_{n+1} is the next digit's u) replace
the digit extraction. vpmaddubsw (AVX2 without VNNI) would saturate on u up to 255,
so that path extracts the digits (in 16-bit lanes).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numallm.kernels.simd.cpu import has_avx2, has_vnni256
from numallm.kernels.simd.scalar import at, load_f16
from numallm.kernels.simd.vec import V8I32, V32I8, _as_i64, _call, _dot_u8s8, _is_bytes, _load_bytes, i32x8, vfma, vhsum, vzero
from numba import njit
from numba.extending import intrinsic, register_jitable

I32 = ir.IntType(32)
# TQ1_0's dot comes out times 256 on the two-dot path (see above).
TQ1_BY_DOTS = has_vnni256() or not has_avx2()
TQ1_UNIT = np.float32(1 / 256 if TQ1_BY_DOTS else 1)


def _acc(builder: ir.IRBuilder, acc: ir.Value, u: ir.Value, s: ir.Value) -> ir.Value:
    """acc + _dot_u8s8(u, s): one vpdpbusd into acc with VNNI."""
    if has_vnni256():
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", V8I32,
                     [acc, builder.bitcast(u, V8I32), builder.bitcast(s, V8I32)])
    return builder.add(acc, _dot_u8s8(builder, u, s))


def _shuffle(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, pick: list[int]) -> ir.Value:
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, len(pick)), pick))


@intrinsic
def dot_tq2(typingctx, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """TQ2_0: sum over the 256 elements of the block at w[p] of (t + 1) xq[xo + e], as an
    I32x8. Element 128h + 32s + m is bits 2s of byte 32h + m."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, xa, xov = args[0], _as_i64(builder, args[1]), args[2], _as_i64(builder, args[3])
        i64 = ir.IntType(64)
        acc = ir.Constant(V8I32, None)
        for h in range(2):
            raw = _load_bytes(context, builder, sig.args[0], wa, builder.add(pv, ir.Constant(i64, 32 * h)), 32)
            for s in range(4):
                u = builder.and_(builder.lshr(raw, ir.Constant(V32I8, [2 * s] * 32)), ir.Constant(V32I8, [3] * 32))
                x = _load_bytes(context, builder, sig.args[2], xa, builder.add(xov, ir.Constant(i64, 128 * h + 32 * s)), 32)
                acc = _acc(builder, acc, u, x)
        return acc
    return i32x8(w, p, xq, xo), codegen


def _times(builder: ir.IRBuilder, v: ir.Value, k: int) -> ir.Value:
    """v * k mod 256 bytewise, k 3 or 9, by shifts and adds (x86 has no byte multiply)."""
    if k == 3:
        return builder.add(v, builder.add(v, v))
    return builder.add(v, builder.shl(v, ir.Constant(v.type, [3] * v.type.count)))


def _digit(builder: ir.IRBuilder, u: ir.Value) -> ir.Value:
    """floor(3 u / 256) bytewise, in 16-bit lanes."""
    v16 = ir.VectorType(ir.IntType(16), 32)
    t = builder.mul(builder.zext(u, v16), ir.Constant(v16, [3] * 32))
    return builder.trunc(builder.lshr(t, ir.Constant(v16, [8] * 32)), V32I8)


@intrinsic
def dot_tq1(typingctx, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """TQ1_0: sum over the 256 elements of the block at w[p] of (t + 1) xq[xo + e], times
    1 / TQ1_UNIT, as an I32x8. Bytes 0-31 hold elements 32n + m (digit n of byte m),
    bytes 32-47 elements 160 + 16n + m, bytes 48-51 elements 240 + 4n + m."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, xa, xov = args[0], _as_i64(builder, args[1]), args[2], _as_i64(builder, args[3])
        i64 = ir.IntType(64)

        def load(arrty, arr, base, off, n):  # type: ignore[no-untyped-def]
            return _load_bytes(context, builder, arrty, arr, builder.add(base, ir.Constant(i64, off)), n)

        # The 8 vectors of 32 elements, each as u (digit = floor(3u / 256)).
        lo = load(sig.args[0], wa, pv, 0, 32)
        us = [lo]
        for _ in range(4):
            us.append(_times(builder, us[-1], 3))
        mid = load(sig.args[0], wa, pv, 32, 16)
        m2 = _shuffle(builder, mid, _times(builder, mid, 3), list(range(32)))         # digits 0, 1
        m4 = _times(builder, m2, 9)                                                   # digits 2, 3
        qh = load(sig.args[0], wa, pv, 48, 4)
        q2 = _shuffle(builder, qh, _times(builder, qh, 3), list(range(8)))            # digits 0, 1
        q4 = _shuffle(builder, q2, _times(builder, q2, 9), list(range(16)))           # digits 0-3
        m81 = _times(builder, _shuffle(builder, m4, m4, list(range(16))), 9)          # digit 4
        us += [m2, m4, _shuffle(builder, m81, q4, list(range(32)))]
        acc = ir.Constant(V8I32, None)
        if TQ1_BY_DOTS:
            nxt = ir.Constant(V8I32, None)
            for c, u in enumerate(us):
                x = load(sig.args[2], xa, xov, 32 * c, 32)
                acc = _acc(builder, acc, u, x)
                nxt = _acc(builder, nxt, us[c + 1] if c < 4 else _times(builder, u, 3), x)
            return builder.sub(builder.mul(acc, ir.Constant(V8I32, [3] * 8)), nxt)
        for c, u in enumerate(us):
            acc = _acc(builder, acc, _digit(builder, u), load(sig.args[2], xa, xov, 32 * c, 32))
        return acc
    return i32x8(w, p, xq, xo), codegen


def _tq_rows(dot, size: int, d_at: int, unit: np.float32):  # type: ignore[no-untyped-def]
    """rows(w, rb, nb, xq, xd, xs, out, r0, r1) of a ternary type: out[r] = sum over the
    blocks b of row r of d_b (xd_b * unit * dot - xsum_b), xsum_b the activation's sum
    over the block (from xs, d times the sums per 32) that the + 1 added. dot is a
    plain function (register_jitable), as rows._row_kernel's block, for the cache."""
    register_jitable(inline="always")(dot)

    @njit(nogil=True, cache=True)
    def rows(w, rb, nb, xq, xd, xs, out, r0, r1):  # type: ignore[no-untyped-def]
        xsum = np.empty(nb, np.float32)
        for b in range(nb):
            s = np.float32(0)
            for c in range(8):
                s += at(xs, 8 * b + c)
            xsum[b] = s
        for r in range(r0, r1):
            acc = vzero()
            off = np.float32(0)
            for b in range(nb):
                p = r * rb + size * b
                d = load_f16(w, p + d_at)
                acc = vfma(acc, dot(w, p, xq, 256 * b), d * at(xd, 8 * b) * unit)
                off += d * xsum[b]
            out[r] = vhsum(acc) - off
    return rows


def _tq2_0(w, p, xq, xo):  # type: ignore[no-untyped-def]
    """TQ2_0."""
    return dot_tq2(w, p, xq, xo)


def _tq1_0(w, p, xq, xo):  # type: ignore[no-untyped-def]
    """TQ1_0."""
    return dot_tq1(w, p, xq, xo)


rows_tq2_0 = _tq_rows(_tq2_0, 66, 64, np.float32(1))
rows_tq1_0 = _tq_rows(_tq1_0, 54, 52, TQ1_UNIT)
