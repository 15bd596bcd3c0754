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

TQ2_0's matrices go by tiles of 16 rows, as Q4_0's (kernels/families/q4_q8/tiles.py,
whose packer and tile pass they take; a matrix's last rows % 16 stay in the file's
layout and take the row dot). A tile holds, for each super-block in turn,

    [d x 16 float16] [16 vectors of 64 bytes]

where byte 4i + j of vector v is byte 4v + j of row i's quants: its 4 planes of 2 bits
(bits 2s) are elements 128 (v // 8) + 32 s + 4 (v % 8) + j. Per vector and token, four
vpdpbusd of a plane of the 16 rows (unpacked once for all the pass's tokens) with the
token's 4 activations broadcast; the + 1 comes off in integers (the accumulators start
at minus the token's sum over the super-block, bias_sums) and a super-block is scaled
once: 64 vpdpbusd to one convert and two float ops, where the unpacking int8 GEMM
(drivers/gemm_int8.py) spent three float ops per 8 and unpacked each tile per call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from llvmlite import ir
from numallm.kernels.families.q4_q8.tiles import TILE, dot_tokens, scale_tokens, start_tokens, store_tokens
from numallm.kernels.simd.cpu import has_avx2, has_vnni256
from numallm.kernels.simd.i32x16 import V64I8, _broadcast4, _dpbusd16, i32x16, ifill16
from numallm.kernels.simd.scalar import at, load_f16
from numallm.kernels.simd.vec import (
    V8I32,
    V32I8,
    _as_i64,
    _call,
    _dot_u8s8,
    _is_bytes,
    _load_bytes,
    i32x8,
    vfma,
    vhsum,
    vload_f16x16,
    vzero,
    vzero16,
)
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


@intrinsic
def idot16_tq2(typingctx, acc, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """acc plus, for the 16 rows of a vector of a TQ2_0 tile (lane i = 4 bytes of row i,
    plane s = bits 2s), the dot of plane s with xq[xo + 32 s: xo + 32 s + 4], s < 4."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, wa, pv, xa, xov = args
        raw = _load_bytes(context, builder, sig.args[1], wa, _as_i64(builder, pv), 64)
        i64 = ir.IntType(64)
        for s in range(4):
            u = builder.and_(builder.lshr(raw, ir.Constant(V64I8, [2 * s] * 64)), ir.Constant(V64I8, [3] * 64))
            x = _broadcast4(context, builder, sig.args[3], xa, builder.add(_as_i64(builder, xov), ir.Constant(i64, 32 * s)))
            a = _dpbusd16(builder, a, u, x)
        return a
    return i32x16(i32x16, w, p, xq, xo), codegen


_TQ2_TS = 66  # bytes of a super-block


@register_jitable(inline="always")
def _start256(xs, k):  # type: ignore[no-untyped-def]
    """A super-block's accumulators at their start: the sum of its 8 bias_sums."""
    s = at(xs, k) + at(xs, k + 1) + at(xs, k + 2) + at(xs, k + 3)
    return ifill16(np.int32(s + at(xs, k + 4) + at(xs, k + 5) + at(xs, k + 6) + at(xs, k + 7)))


_starts = start_tokens(_start256)
_dots = dot_tokens(idot16_tq2)


@cache
def tq2_tile_kernel(ntok: int) -> Callable[..., None]:
    """kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc): dst[dr + j, dc + i] = row i of the
    TQ2_0 tile at byte p of w (nb super-blocks) dotted with token t0 + j, j < ntok,
    from the flat xq, xd of actq (q8_K; token t's blocks of 32 start at 8 nb t) and
    xs, their bias_sums."""

    @njit(nogil=True, cache=True)
    def kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc):  # type: ignore[no-untyped-def]
        f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = vzero16()
        step, bstep = 256 * nb, 8 * nb  # xq bytes and blocks of 32 from one token to the next
        for b in range(nb):
            c = p + TILE * _TQ2_TS * b
            dv = vload_f16x16(w, c)
            x = 256 * (t0 * nb + b)
            k = x >> 5
            i0, i1, i2, i3, i4, i5, i6, i7 = _starts(xs, k, bstep, ntok)
            for v in range(16):
                i0, i1, i2, i3, i4, i5, i6, i7 = _dots(i0, i1, i2, i3, i4, i5, i6, i7, ntok, v, w, c + 2 * TILE + 64 * v,
                                                       xq, x + 128 * (v >> 3) + 4 * (v & 7), step)
            f0, f1, f2, f3, f4, f5, f6, f7 = scale_tokens(f0, f1, f2, f3, f4, f5, f6, f7, i0, i1, i2, i3, i4, i5, i6, i7,
                                                          ntok, dv, dv, xd, xs, k, bstep, False)
        store_tokens(dst, dr, dc, ntok, f0, f1, f2, f3, f4, f5, f6, f7)

    return kernel


@njit(nogil=True, cache=True)
def decode_tiled_tq2(w, p, i, nb, y):  # type: ignore[no-untyped-def]
    """Row i of the TQ2_0 tile at byte p as float32 into y, as ggml's dequantizer
    computes it: d * (q - 1)."""
    for b in range(nb):
        c = p + TILE * _TQ2_TS * b
        d = load_f16(w, c + 2 * i)
        for v in range(16):
            for j in range(4):
                byte = np.int32(at(w, c + 2 * TILE + 64 * v + 4 * i + j))
                for s in range(4):
                    y[256 * b + 128 * (v >> 3) + 32 * s + 4 * (v & 7) + j] = d * np.float32(((byte >> (2 * s)) & 3) - 1)
