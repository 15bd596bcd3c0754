"""One K-quant super-block's dot product as LLVM vector IR, for the matvec kernels of
the K-quants (kernels/families/kquants/rows.py).

A super-block holds 256 elements; `kquant_dot` takes them as four groups of 64. A
group's quants are two 32-element runs that mostly share one 32-byte plane of
packed bits (the low and high nibbles of Q4_K/Q5_K, bit pairs 2s and 2s + 2 of
Q2_K/Q3_K; Q6_K's two runs are 64 consecutive bytes), so the plane is loaded once
into both halves of a 64-byte vector, shifted per half by a constant (one vpsrlvq)
and masked; the high bits of Q3_K, Q5_K and Q6_K come from their own 32-byte plane
rotated into place per half (one vprolvq) and or-ed in. One
vpdpbusd on a zmm register (two halves through vec._dot_u8s8 without AVX-512 VNNI)
dots the 64 quants with 64 int8 activations, 16 int32 lanes of 4 elements each. Each
lane is then converted once and multiplied by its sub-block's factor d * scale * xd,
picked from a vector of the super-block's factors by one constant permute. The four
groups sum into one F32x16 per super-block (an independent chain per super-block,
so the loop-carried dependency is one add).

The factor vector has one lane per sub-block: 8 of 32 elements (Q4_K, Q5_K) or 16 of
16 elements (Q2_K, Q3_K, Q6_K); the callers build it once per super-block from the
decoders below, with the min or offset terms applied through the activation's block
sums.
"""

from __future__ import annotations

from typing import NamedTuple

from llvmlite import ir
from numallm.kernels.qcodes import Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
from numallm.kernels.simd.i32x16 import V16I32, V64I8, _dpbusd16, i32x16
from numallm.kernels.simd.scalar import half_to_float
from numallm.kernels.simd.vec import (
    I8,
    I32,
    I64,
    V16F32,
    _as_i64,
    _call,
    _is_bytes,
    _load_bytes,
    _splat,
    f32x16,
)
from numba.core import types
from numba.extending import intrinsic

V8I64 = ir.VectorType(I64, 8)
V16I8 = ir.VectorType(I8, 16)


class _Group(NamedTuple):
    """Where group g's 64 quants come from, relative to the super-block's first byte."""
    low: int                 # offset of the low-bit plane
    wide: bool               # the plane is 64 bytes (one per run) rather than 32 (shared)
    shifts: tuple[int, int]  # right shift of the plane for the first and second run
    mask: int                # the low bits' mask after shifting
    high: int | None         # offset of the 32-byte high-bit plane, None if no high bits
    hbits: tuple[int, int]   # lowest high bit of each run in that plane
    hpos: int                # where the high bits go in the quant
    hmask: int               # the high bits' mask at that position


def _group(kind: int, g: int) -> _Group:
    """The layout of group g (elements 64g..64g+63) of a super-block of type kind."""
    h, t = divmod(g, 2)  # half of 128 elements, and which 64 of it
    if kind == Q4_K:  # 4-bit nibbles: low ones elements 64g.., high ones 64g+32..
        return _Group(16 + 32 * g, False, (0, 4), 15, None, (0, 0), 0, 0)
    if kind == Q5_K:  # plus bit 2g (2g + 1) of qh[i] as bit 4
        return _Group(48 + 32 * g, False, (0, 4), 15, 16, (2 * g, 2 * g + 1), 4, 16)
    if kind == Q2_K:  # element 128h + 32s + i: bits 2s of qs[32h + i]
        return _Group(16 + 32 * h, False, (4 * t, 4 * t + 2), 3, None, (0, 0), 0, 0)
    if kind == Q3_K:  # plus bit 4h + s of hmask[i] as bit 2
        return _Group(32 + 32 * h, False, (4 * t, 4 * t + 2), 3, 0, (4 * h + 2 * t, 4 * h + 2 * t + 1), 2, 4)
    # Q6_K: element 128h + 32s + i: ql[64h + 32(s % 2) + i] >> 4(s // 2), plus bits 2s
    # of qh[32h + i] as bits 4-5; runs s = 2t and 2t + 1 read 64 consecutive ql bytes.
    return _Group(64 * h, True, (4 * t, 4 * t), 15, 128 + 32 * h, (4 * t, 4 * t + 2), 4, 48)


def _plane64(context, builder, wt, w, off, wide: bool):  # type: ignore[no-untyped-def]
    """64 bytes at w[off], or the 32 there in both halves (one vbroadcasti64x4), as <8 x i64>."""
    raw = _load_bytes(context, builder, wt, w, off, 64 if wide else 32)
    if not wide:
        raw = builder.shuffle_vector(raw, ir.Constant(raw.type, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, 64), [i % 32 for i in range(64)]))
    return builder.bitcast(raw, V8I64)


def _per_half(a: int, b: int) -> ir.Constant:
    return ir.Constant(V8I64, [a] * 4 + [b] * 4)


def _group_quants(context, builder, wt, w, p, kind: int, g: int) -> ir.Value:  # type: ignore[no-untyped-def]
    """<64 x i8> unsigned quants of group g of the super-block at byte p."""
    lay = _group(kind, g)
    lo = builder.lshr(_plane64(context, builder, wt, w, builder.add(p, ir.Constant(I64, lay.low)), lay.wide),
                      _per_half(*lay.shifts))
    q = builder.and_(builder.bitcast(lo, V64I8), ir.Constant(V64I8, [lay.mask] * 64))
    if lay.high is None:
        return q
    hp = _plane64(context, builder, wt, w, builder.add(p, ir.Constant(I64, lay.high)), False)
    # Rotating each qword left by hpos - bit moves bit `bit` of every byte to bit hpos
    # of the same byte; the mask drops what came from the neighbours.
    rot = _per_half(*((lay.hpos - b) % 64 for b in lay.hbits))
    hi = _call(builder, "llvm.fshl.v8i64", V8I64, [hp, hp, rot])
    return builder.or_(q, builder.and_(builder.bitcast(hi, V64I8), ir.Constant(V64I8, [lay.hmask] * 64)))


@intrinsic(prefer_literal=True)
def kquant_dot(typingctx, w, p, f, xq, xo, kind):  # type: ignore[no-untyped-def]
    """Sum over the 256 elements of the super-block at w[p] (type `kind`, a constant
    GGML code) of float(q) * f[its sub-block] * xq[xo + element], as an F32x16 whose
    lanes the caller adds up; q is the unsigned quant (Q3_K's q + 4, Q6_K's q + 32).
    f is an F32x16 of per-sub-block factors: lanes 0-7 for the 8 sub-blocks of Q4_K and
    Q5_K (8-15 unused), all 16 for Q2_K, Q3_K and Q6_K."""
    if not (_is_bytes(w) and _is_bytes(xq) and isinstance(kind, types.IntegerLiteral)
            and kind.literal_value in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)):
        return None
    code = kind.literal_value
    run = 8 if code in (Q4_K, Q5_K) else 4  # lanes per sub-block: 32 or 16 elements
    if f != f32x16:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, fv, xa, xov = args[:5]
        p64, x64 = _as_i64(builder, pv), _as_i64(builder, xov)
        total = None
        for g in range(4):
            u = _group_quants(context, builder, sig.args[0], wa, p64, code, g)
            s = _load_bytes(context, builder, sig.args[3], xa, builder.add(x64, ir.Constant(I64, 64 * g)), 64)
            dots = builder.sitofp(_dpbusd16(builder, ir.Constant(V16I32, None), u, s), V16F32)
            first = (2 * g if run == 8 else 4 * g)
            lanes = ir.Constant(ir.VectorType(I32, 16), [first + i // run for i in range(16)])
            factor = builder.shuffle_vector(fv, ir.Constant(fv.type, ir.Undefined), lanes)
            total = (builder.fmul(dots, factor) if total is None
                     else _call(builder, "llvm.fmuladd.v16f32", V16F32, [dots, factor, total]))
        return total
    return f32x16(w, p, f, xq, xo, kind), codegen


# ---- per-super-block factors ---------------------------------------------------------

@intrinsic
def k_factors16(typingctx, w, p):  # type: ignore[no-untyped-def]
    """Q4_K/Q5_K: [d * scale_i for i < 8, dmin * min_i for i < 8] as F32x16 from the
    super-block at w[p] (d, dmin float16 at p, p + 2; the 6-bit scales and mins packed
    in the 12 bytes at p + 4). Scale/min i < 4: byte i / i + 4, low 6 bits; i >= 4: the
    low / high nibble of byte i + 4, plus the top 2 bits of byte i - 4 / i as bits 4-5."""
    if not _is_bytes(w):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        p = _as_i64(builder, args[1])
        raw = _load_bytes(context, builder, sig.args[0], args[0], builder.add(p, ir.Constant(I64, 4)), 16)
        pick = ir.VectorType(I32, 16)

        def field(src: list[int], shifts: list[int], masks: list[int]) -> ir.Value:
            v = builder.zext(builder.shuffle_vector(raw, ir.Constant(V16I8, ir.Undefined), ir.Constant(pick, src)), V16I32)
            return builder.and_(builder.lshr(v, ir.Constant(V16I32, shifts)), ir.Constant(V16I32, masks))

        low = field([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11],
                    [0] * 12 + [4] * 4, [63] * 4 + [15] * 4 + [63] * 4 + [15] * 4)
        top = field([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7],
                    [2] * 16, [0] * 4 + [0x30] * 4 + [0] * 4 + [0x30] * 4)
        scales = builder.uitofp(builder.or_(low, top), V16F32)
        dd = half_to_float(builder, builder.bitcast(_load_bytes(context, builder, sig.args[0], args[0], p, 4),
                                                    ir.VectorType(ir.IntType(16), 2)))
        dd16 = builder.shuffle_vector(dd, ir.Constant(dd.type, ir.Undefined), ir.Constant(pick, [i // 8 for i in range(16)]))
        return builder.fmul(scales, dd16)
    return f32x16(w, p), codegen


# ---- per-super-block factors of Q2_K, Q3_K and Q6_K: 16 sub-blocks of 16 ------------


@intrinsic(prefer_literal=True)
def bytes16(typingctx, w, p, mode):  # type: ignore[no-untyped-def]
    """The 16 bytes at w[p] as F32x16: mode 0 as int8 (Q6_K's scales), 1 their low
    nibbles, 2 their high nibbles (Q2_K's scales and mins)."""
    if not (_is_bytes(w) and isinstance(mode, types.IntegerLiteral) and mode.literal_value in (0, 1, 2)):
        return None
    m = mode.literal_value

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        raw = _load_bytes(context, builder, sig.args[0], args[0], _as_i64(builder, args[1]), 16)
        if m == 0:
            return builder.sitofp(raw, V16F32)
        v = builder.lshr(builder.zext(raw, V16I32), ir.Constant(V16I32, [4 * (m - 1)] * 16))
        return builder.uitofp(builder.and_(v, ir.Constant(V16I32, [15] * 16)), V16F32)
    return f32x16(w, p, mode), codegen


@intrinsic
def q3k_scales16(typingctx, w, p):  # type: ignore[no-untyped-def]
    """Q3_K's 16 signed 6-bit sub-block scales from the 12 bytes at w[p] as F32x16
    (reads 16): scale i has low bits (byte i % 8) >> 4 * (i // 8) and high bits
    (byte 8 + i % 4) >> 2 * (i // 4), minus 32."""
    if not _is_bytes(w):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        raw = _load_bytes(context, builder, sig.args[0], args[0], _as_i64(builder, args[1]), 16)
        pick = ir.VectorType(I32, 16)

        def field(src: list[int], shifts: list[int], mask: int) -> ir.Value:
            v = builder.zext(builder.shuffle_vector(raw, ir.Constant(V16I8, ir.Undefined), ir.Constant(pick, src)), V16I32)
            return builder.and_(builder.lshr(v, ir.Constant(V16I32, shifts)), ir.Constant(V16I32, [mask] * 16))

        low = field([i % 8 for i in range(16)], [4 * (i // 8) for i in range(16)], 15)
        high = field([8 + i % 4 for i in range(16)], [2 * (i // 4) for i in range(16)], 3)
        q = builder.sub(builder.or_(low, builder.shl(high, ir.Constant(V16I32, [4] * 16))), ir.Constant(V16I32, [32] * 16))
        return builder.sitofp(q, V16F32)
    return f32x16(w, p), codegen


# ---- the tiled layouts of Q4_K, Q5_K and Q6_K (kernels/families/kquants/tiles.py) -----------------------

def _nibble_dot(context, builder, sig, args, hi: bool, hmask: int, gap: int):  # type: ignore[no-untyped-def]
    """idot16_nib's and idot16_nibh's code: args are (acc, w, p, [qh, bit,] xq, xo, ...);
    hmask (0: none) the high bits' mask at bit 4 onwards, gap how far above `bit` the
    high nibbles' high bits lie."""
    a, wa, pv = args[:3]
    xi = 5 if hmask else 3
    xa, xov = args[xi], args[xi + 1]
    raw = _load_bytes(context, builder, sig.args[1], wa, _as_i64(builder, pv), 64)
    # Shifts of qwords and masks only: on Zen 4 a byte shift (vgf2p8affineqb, LLVM's
    # choice for it) and a rotate each take a cycle of vpdpbusd's pipes, these do not.
    if hi:
        raw = builder.bitcast(builder.lshr(builder.bitcast(raw, V8I64), ir.Constant(V8I64, [4] * 8)), V64I8)
    u = builder.and_(raw, ir.Constant(V64I8, [15] * 64))
    if hmask:
        # Shifting each qword right by `bit`, then by a constant to bit 4 (left by 4 for
        # the low nibbles, by 4 - gap for the high ones), moves bit `bit` (bit + gap) of
        # every byte to its bit 4 (and the next ones along); the mask drops what came
        # from the neighbours. The variable shift is the same for both nibbles of a
        # vector: LLVM does it once.
        plane = builder.bitcast(_load_bytes(context, builder, sig.args[1], wa, _as_i64(builder, args[3]), 64), V8I64)
        up = builder.lshr(plane, _splat(builder, _as_i64(builder, args[4]), V8I64))
        k = 4 - gap if hi else 4
        if k > 0:
            up = builder.shl(up, ir.Constant(V8I64, [k] * 8))
        elif k < 0:
            up = builder.lshr(up, ir.Constant(V8I64, [-k] * 8))
        u = builder.or_(u, builder.and_(builder.bitcast(up, V64I8), ir.Constant(V64I8, [hmask] * 64)))
    x4 = _load_bytes(context, builder, sig.args[xi], xa, _as_i64(builder, xov), 4)
    s = builder.bitcast(_splat(builder, builder.bitcast(x4, I32), V16I32), V64I8)
    return _dpbusd16(builder, a, u, s)


@intrinsic(prefer_literal=True)
def idot16_nib(typingctx, acc, w, p, xq, xo, high):  # type: ignore[no-untyped-def]
    """acc plus, for the 16 rows of a tile vector (lane i = 4 quant bytes of row i), the
    dot of their low (or, with `high`, their high) nibbles with xq[xo:xo+4]."""
    if not (_is_bytes(w) and _is_bytes(xq) and isinstance(high, types.BooleanLiteral)):
        return None
    hi = high.literal_value

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _nibble_dot(context, builder, sig, args, hi, 0, 0)
    return i32x16(i32x16, w, p, xq, xo, high), codegen


@intrinsic(prefer_literal=True)
def idot16_nibh(typingctx, acc, w, p, qh, bit, xq, xo, high, nbits, gap):  # type: ignore[no-untyped-def]
    """idot16_nib with high bits: bits bit..bit + nbits - 1 (with `high`, bit + gap..)
    of the same byte of the 64-byte vector at w[qh] become the quant's bits 4.. (Q5_K:
    1 bit, Q6_K: 2); gap < 8 - nbits, a constant."""
    if not (_is_bytes(w) and _is_bytes(xq) and isinstance(high, types.BooleanLiteral)
            and isinstance(nbits, types.IntegerLiteral) and nbits.literal_value in (1, 2)
            and isinstance(gap, types.IntegerLiteral) and 0 <= gap.literal_value <= 8 - nbits.literal_value):
        return None
    hi, hmask, shift = high.literal_value, 0x10 if nbits.literal_value == 1 else 0x30, gap.literal_value

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _nibble_dot(context, builder, sig, args, hi, hmask, shift)
    return i32x16(i32x16, w, p, qh, bit, xq, xo, high, nbits, gap), codegen


@intrinsic
def q6k_tile_scales(typingctx, w, p, j):  # type: ignore[no-untyped-def]
    """The int8 scale j < 16 of the 16 rows of a Q6_K tile as I32x16, from its four scale
    vectors at w[p] (vector v, lane i: row i's scales 4v..4v+3)."""
    if not _is_bytes(w):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        j64 = _as_i64(builder, args[2])
        off = builder.add(_as_i64(builder, args[1]), builder.mul(builder.lshr(j64, ir.Constant(I64, 2)),
                                                                 ir.Constant(I64, 64)))
        word = builder.bitcast(_load_bytes(context, builder, sig.args[0], args[0], off, 64), V16I32)
        up = builder.trunc(builder.sub(ir.Constant(I64, 24), builder.mul(builder.and_(j64, ir.Constant(I64, 3)),
                                                                        ir.Constant(I64, 8))), I32)
        return builder.ashr(builder.shl(word, _splat(builder, up, V16I32)), ir.Constant(V16I32, [24] * 16))
    return i32x16(w, p, j), codegen


@intrinsic(prefer_literal=True)
def q4k_tile_scales(typingctx, w, p, j, mins):  # type: ignore[no-untyped-def]
    """Scale (or, with `mins`, min) j < 8 of the 16 rows of a Q4_K or Q5_K tile as I32x16, from
    its three scale vectors at w[p] (vector v, lane i: row i's scale bytes 4v..4v+3).
    k_scale_min's fields, lane-wise: j < 4 byte j (min: j + 4), low 6 bits; j >= 4 the
    low (min: high) nibble of byte j + 4 and the top 2 bits of byte j - 4 (min: j)."""
    if not (_is_bytes(w) and isinstance(mins, types.BooleanLiteral)):
        return None
    is_min = mins.literal_value

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, jv = args[:3]
        p64, j64 = _as_i64(builder, pv), _as_i64(builder, jv)

        def word(v: int) -> ir.Value:
            off = builder.add(p64, ir.Constant(I64, 64 * v))
            return builder.bitcast(_load_bytes(context, builder, sig.args[0], wa, off, 64), V16I32)

        own, s2 = word(1 if is_min else 0), word(2)
        k8 = builder.trunc(builder.mul(builder.and_(j64, ir.Constant(I64, 3)), ir.Constant(I64, 8)), I32)
        high = builder.icmp_unsigned(">=", j64, ir.Constant(I64, 4))
        sel = builder.select  # j is a constant where the kernel unrolls: these fold away
        shift = builder.add(k8, sel(high, ir.Constant(I32, 4 if is_min else 0), ir.Constant(I32, 0)))
        low = builder.and_(builder.lshr(sel(high, s2, own), _splat(builder, shift, V16I32)),
                           _splat(builder, sel(high, ir.Constant(I32, 15), ir.Constant(I32, 63)), V16I32))
        top = builder.and_(builder.lshr(own, _splat(builder, builder.add(k8, ir.Constant(I32, 2)), V16I32)),
                           _splat(builder, sel(high, ir.Constant(I32, 0x30), ir.Constant(I32, 0)), V16I32))
        return builder.or_(low, top)
    return i32x16(w, p, j, mins), codegen


@intrinsic
def iscaled16(typingctx, acc, a, sa, b, sb):  # type: ignore[no-untyped-def]
    """acc + a * sa + b * sb, lane by lane, for I32x16s: two sub-blocks' integer dots
    times their scales (vpmulld: no float work per sub-block)."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        acc, a, sa, b, sb = args
        return builder.add(acc, builder.add(builder.mul(a, sa), builder.mul(b, sb)))
    return i32x16(i32x16, i32x16, i32x16, i32x16, i32x16), codegen


@intrinsic
def isplat16(typingctx, a, k):  # type: ignore[no-untyped-def]
    """An I32x16 of the int32 a[k] (unchecked)."""
    if not (isinstance(a, types.Array) and a.dtype == types.int32):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        v = builder.load(builder.gep(arr.data, [_as_i64(builder, args[1])]))
        return _splat(builder, v, V16I32)
    return i32x16(a, k), codegen


@intrinsic
def vfloat16(typingctx, a):  # type: ignore[no-untyped-def]
    """An I32x16 as F32x16."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.sitofp(args[0], V16F32)
    return f32x16(i32x16), codegen
