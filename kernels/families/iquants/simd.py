"""SIMD steps of the i-quant kernels (rows.py, blocks.py) as LLVM vector IR.

`dot_lut4` is IQ4_NL's, IQ4_XS's and MXFP4's inner step: 16 bytes of nibbles become 32
int8 values through a 16-entry table (one vpshufb with AVX2; a chain of compares and
selects on the generic path), which vec._dot_s8s8 multiplies with 32 int8
activations (vpdpbusd with VNNI, vpmaddubsw/vpmaddwd with AVX2, plain LLVM elsewhere).
"""

from __future__ import annotations

from llvmlite import ir
from numallm.kernels.families.iquants.tables import KVALUES_IQ4NL, KVALUES_MXFP4
from numallm.kernels.simd.cpu import has_avx2, target_features
from numallm.kernels.simd.i32x16 import Q8_BIAS, V16I32, V64I8, _broadcast4, _by_halves, _dpbusd16, i32x16
from numallm.kernels.simd.vec import (
    I8,
    I32,
    V8I32,
    V16F32,
    V32I8,
    _as_i64,
    _call,
    _dot_s8s8,
    _dot_u8s8,
    _is_bytes,
    _load_bytes,
    _nibbles16,
    _splat,
    f32x16,
    i32x8,
)
from numba.core import types
from numba.extending import intrinsic

# Table ids for dot_lut4 (a literal argument).
LUT_IQ4NL, LUT_MXFP4 = 0, 1
_TABLES = {LUT_IQ4NL: [int(v) for v in KVALUES_IQ4NL], LUT_MXFP4: [int(v) for v in KVALUES_MXFP4]}


def _lookup16(builder: ir.IRBuilder, idx: ir.Value, table: list[int]) -> ir.Value:
    """<n x i8> table[idx] for idx <n x i8> in 0..15, n 32 or 64."""
    n = idx.type.count
    vty = ir.VectorType(I8, n)
    # vpshufb looks up within each 16-byte lane: the table in every lane
    if n == 64 and "avx512bw" in target_features():
        return _call(builder, "llvm.x86.avx512.pshuf.b.512", vty, [ir.Constant(vty, table * 4), idx])
    if n == 64 and has_avx2():
        undef = ir.Constant(vty, ir.Undefined)
        halves = [_lookup16(builder, builder.shuffle_vector(idx, undef, ir.Constant(
            ir.VectorType(I32, 32), list(range(32 * h, 32 * h + 32)))), table) for h in range(2)]
        return builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(I32, 64), list(range(64))))
    if has_avx2():
        return _call(builder, "llvm.x86.avx2.pshuf.b", V32I8, [ir.Constant(V32I8, table * 2), idx])
    res = ir.Constant(vty, None)
    for k, v in enumerate(table):
        if v:
            hit = builder.icmp_unsigned("==", idx, ir.Constant(vty, [k] * n))
            res = builder.select(hit, ir.Constant(vty, [v] * n), res)
    return res


def _lut_values(context, builder, wt, w, p, table: list[int]) -> ir.Value:  # type: ignore[no-untyped-def]
    """<32 x i8> table[nibble] of the 16 bytes at w[p]: low nibbles first, then high ones."""
    idx = _nibbles16(builder, _load_bytes(context, builder, wt, w, _as_i64(builder, p), 16))
    return _lookup16(builder, idx, table)


def _lut_table(w, x, lut) -> list[int] | None:  # type: ignore[no-untyped-def]
    """The table of the literal `lut` for byte arrays w and x, or None (no match)."""
    if _is_bytes(w) and _is_bytes(x) and isinstance(lut, types.IntegerLiteral):
        return _TABLES.get(lut.literal_value)
    return None


@intrinsic(prefer_literal=True)
def dot_lut4(typingctx, w, p, xq, xo, lut):  # type: ignore[no-untyped-def]
    """Sum over 32 elements of table[nibble] * xq[xo + element], where the nibbles are the
    16 bytes at w[p] (low nibbles elements 0-15, high ones 16-31) and table is the
    literal `lut`'s (LUT_IQ4NL, LUT_MXFP4); an I32x8, lanes as vec._dot_u8s8."""
    table = _lut_table(w, xq, lut)
    if table is None:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, xa, xov = args[:4]
        s = _load_bytes(context, builder, sig.args[2], xa, _as_i64(builder, xov), 32)
        return _dot_s8s8(builder, _lut_values(context, builder, sig.args[0], wa, pv, table), s)
    return i32x8(w, p, xq, xo, lut), codegen


# The tiled kernels' tables (idot16_lut): with 512-bit VNNI the values plus LUT_BIAS, as
# unsigned bytes for vpdpbusd (the kernel takes LUT_BIAS times the activation's block
# sums back off); otherwise signed, through vec._dot_s8s8 (vpmaddubsw would saturate
# the pairs of unsigned values up to 255).
LUT_BIAS = Q8_BIAS
_TILE_TABLES = {k: [(v + LUT_BIAS + 128) % 256 - 128 for v in t] for k, t in _TABLES.items()}


def _nibble_values(builder: ir.IRBuilder, raw: ir.Value, table: list[int]) -> tuple[ir.Value, ir.Value]:
    """table[low nibble], table[high nibble] of the <64 x i8> raw."""
    if "avx512vbmi" in target_features():
        # vpermb reads 6 index bits: a table of 64 repeating the 16 needs no mask, and
        # the high nibbles come by a 16-bit shift (bits 4-5 from the next byte are don't-cares)
        t64 = ir.Constant(V64I8, table * 4)
        v32i16 = ir.VectorType(ir.IntType(16), 32)
        hi = builder.bitcast(builder.lshr(builder.bitcast(raw, v32i16), ir.Constant(v32i16, [4] * 32)), V64I8)
        return tuple(_call(builder, "llvm.x86.avx512.permvar.qi.512", V64I8, [t64, idx]) for idx in (raw, hi))
    return (_lookup16(builder, builder.and_(raw, ir.Constant(V64I8, [15] * 64)), table),
            _lookup16(builder, builder.lshr(raw, ir.Constant(V64I8, [4] * 64)), table))


@intrinsic(prefer_literal=True)
def idot16_lut(typingctx, acc, w, p, xq, xo, lut):  # type: ignore[no-untyped-def]
    """acc plus, for the 16 rows of a nibble vector of a tile (lane i = 4 bytes of row
    i: low nibbles elements c..c+3, high nibbles c+16..c+19, as Q4_0's tiles), the dot of
    their table values (lut: LUT_IQ4NL, LUT_MXFP4; plus LUT_BIAS) with xq[xo:xo+4] and
    xq[xo+16:xo+20]."""
    if not (_is_bytes(w) and _is_bytes(xq) and isinstance(lut, types.IntegerLiteral)):
        return None
    table = _TILE_TABLES.get(lut.literal_value)
    if table is None:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, wa, pv, xa, xov = args[:5]
        raw = _load_bytes(context, builder, sig.args[1], wa, _as_i64(builder, pv), 64)
        xh = builder.add(_as_i64(builder, xov), ir.Constant(ir.IntType(64), 16))
        for nib, xoff in zip(_nibble_values(builder, raw, table), (xov, xh)):
            x = _broadcast4(context, builder, sig.args[3], xa, xoff)
            a = _dpbusd16(builder, a, nib, x) if LUT_BIAS else builder.add(a, _by_halves(builder, nib, x, _dot_s8s8))
        return a
    return i32x16(i32x16, w, p, xq, xo, lut), codegen


@intrinsic
def vload_e8m0x16(typingctx, w, p):  # type: ignore[no-untyped-def]
    """The 16 E8M0 exponent bytes at w[p] as F32x16, each ggml_e8m0_to_fp32_half
    (tables.E8M0_HALF): 2**(e - 128), a subnormal for e < 2."""
    if not _is_bytes(w):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        e = builder.zext(_load_bytes(context, builder, sig.args[0], args[0], _as_i64(builder, args[1]), 16), V16I32)
        normal = builder.shl(builder.sub(e, ir.Constant(V16I32, [1] * 16)), ir.Constant(V16I32, [23] * 16))
        tiny = builder.shl(ir.Constant(V16I32, [0x200000] * 16), e)
        bits = builder.select(builder.icmp_unsigned("<", e, ir.Constant(V16I32, [2] * 16)), tiny, normal)
        return builder.bitcast(bits, V16F32)
    return f32x16(w, p), codegen


@intrinsic
def iq4xs_tile_scales(typingctx, w, p, ib):  # type: ignore[no-untyped-def]
    """Sub-block ib's scale (6 bits minus 32) of the 16 rows of an IQ4_XS tile as
    F32x16, from the rows' scales_h (16 uint16 at w[p]) and scales_l (a vector at
    w[p + 32], lane i: row i's 4 bytes, nibble ib)."""
    if not (_is_bytes(w) and isinstance(ib, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, ibv = args
        p64 = _as_i64(builder, pv)
        sh = builder.zext(builder.bitcast(_load_bytes(context, builder, sig.args[0], wa, p64, 32),
                                          ir.VectorType(ir.IntType(16), 16)), V16I32)
        sl = builder.bitcast(_load_bytes(context, builder, sig.args[0], wa,
                                         builder.add(p64, ir.Constant(ir.IntType(64), 32)), 64), V16I32)
        i = builder.trunc(ibv, I32) if ibv.type.width > 32 else builder.zext(ibv, I32)
        lo = builder.and_(builder.lshr(sl, _splat(builder, builder.shl(i, ir.Constant(I32, 2)), V16I32)),
                          ir.Constant(V16I32, [15] * 16))
        hi = builder.and_(builder.lshr(sh, _splat(builder, builder.shl(i, ir.Constant(I32, 1)), V16I32)),
                          ir.Constant(V16I32, [3] * 16))
        ls = builder.sub(builder.or_(lo, builder.shl(hi, ir.Constant(V16I32, [4] * 16))),
                         ir.Constant(V16I32, [32] * 16))
        return builder.sitofp(ls, V16F32)
    return f32x16(w, p, ib), codegen


@intrinsic
def izero(typingctx):  # type: ignore[no-untyped-def]
    """An I32x8 of zeros."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(V8I32, None)
    return i32x8(), codegen


@intrinsic
def vimadd(typingctx, acc, v, s):  # type: ignore[no-untyped-def]
    """acc + v * s for I32x8 acc, v and an integer s (a sub-block's integer scale)."""
    if not isinstance(s, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, vi, sc = args
        if sc.type.width != 32:
            sc = builder.trunc(sc, ir.IntType(32)) if sc.type.width > 32 else builder.sext(sc, ir.IntType(32))
        return builder.add(a, builder.mul(vi, _splat(builder, sc, V8I32)))
    return i32x8(i32x8, i32x8, s), codegen


@intrinsic
def vimadd2(typingctx, acc, v, s0, s1):  # type: ignore[no-untyped-def]
    """acc + v * [s0 x 4, s1 x 4]: a 32-element dot's I32x8 times the integer scales of
    its two halves of 16."""
    if not (isinstance(s0, types.Integer) and isinstance(s1, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, vi, x0, x1 = args
        i32 = ir.IntType(32)
        x0, x1 = (x if x.type.width == 32 else (builder.trunc(x, i32) if x.type.width > 32 else builder.sext(x, i32))
                  for x in (x0, x1))
        s = builder.shuffle_vector(_splat(builder, x0, V8I32), _splat(builder, x1, V8I32),
                                   ir.Constant(ir.VectorType(i32, 8), [0, 1, 2, 3, 8, 9, 10, 11]))
        return builder.add(a, builder.mul(vi, s))
    return i32x8(i32x8, i32x8, s0, s1), codegen


def _grid_rows(context, builder, gty, g, idxs, width: int) -> ir.Value:
    """<32 x i8> of the grid rows idxs (width bytes each) of the int8 table g, in order."""
    ity = ir.IntType(8 * width)
    n = 32 // width
    base = context.make_array(gty)(context, builder, g).data
    vec = ir.Constant(ir.VectorType(ity, n), None)
    for k, i in enumerate(idxs):
        off = builder.mul(_as_i64(builder, i), ir.Constant(ir.IntType(64), width))
        row = builder.load(builder.bitcast(builder.gep(base, [off]), ity.as_pointer()), align=1)
        vec = builder.insert_element(vec, row, ir.Constant(ir.IntType(32), k))
    return builder.bitcast(vec, V32I8)


def _bytes_of_bits(builder: ir.IRBuilder, bits32: ir.Value) -> ir.Value:
    """<32 x i1>: lane j is bit j of the uint32 bits32 (byte j // 8, bit j % 8)."""
    i32 = ir.IntType(32)
    v = bits32 if bits32.type.width == 32 else builder.trunc(bits32, i32)
    b4 = builder.bitcast(v, ir.VectorType(ir.IntType(8), 4))
    spread = builder.shuffle_vector(b4, ir.Constant(b4.type, ir.Undefined),
                                    ir.Constant(ir.VectorType(i32, 32), [j // 8 for j in range(32)]))
    masked = builder.and_(spread, ir.Constant(V32I8, [1 << (j % 8) for j in range(32)]))
    return builder.icmp_unsigned("!=", masked, ir.Constant(V32I8, None))


def _grid_dot(width: int):  # type: ignore[no-untyped-def]
    """An intrinsic f(g, i_0 .. i_{n-1}, signs, xq, xo): 32 grid magnitudes (n = 32 / width
    rows of the uint8-valued table g) dotted with xq[xo:xo+32], element j's product
    negated where bit j of the uint32 signs is set (the sign goes onto the activation,
    as llama.cpp does, so the magnitudes stay unsigned for vpdpbusd / vpmaddubsw)."""
    n = 32 // width
    names = [f"i{k}" for k in range(n)]
    src = f"def typer(typingctx, g, {', '.join(names)}, signs, xq, xo):\n    return _typer(g, [{', '.join(names)}], signs, xq, xo)"

    def _typer(g, idx_types, signs, xq, xo):  # type: ignore[no-untyped-def]
        if not (isinstance(g, types.Array) and g.dtype == types.int8 and _is_bytes(xq)):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            grid = _grid_rows(context, builder, sig.args[0], args[0], args[1:1 + n], width)
            neg = _bytes_of_bits(builder, args[1 + n])
            x = _load_bytes(context, builder, sig.args[2 + n], args[2 + n], _as_i64(builder, args[3 + n]), 32)
            xs = builder.select(neg, builder.sub(ir.Constant(V32I8, None), x), x)
            return _dot_u8s8(builder, grid, xs)
        return i32x8(g, *idx_types, signs, xq, xo), codegen

    scope = {"_typer": _typer}
    exec(src, scope)  # noqa: S102 (parameter names built above)
    typer = scope["typer"]
    typer.__name__ = typer.__qualname__ = f"dot_grid{width}"
    return intrinsic(typer)


dot_grid8 = _grid_dot(8)  # IQ2_XXS, IQ2_XS, IQ2_S: 4 rows of 8
dot_grid4 = _grid_dot(4)  # IQ3_XXS, IQ3_S: 8 rows of 4


@intrinsic
def dot_grid1(typingctx, g, i0, i1, i2, i3, deltas, xq, xo):  # type: ignore[no-untyped-def]
    """IQ1_S/IQ1_M: 32 values 8 * grid + delta (grid rows i0-i3 of the int8 table g in
    {-1, 0, 1}; delta byte k of the uint32 deltas, +1 or -1 as int8, for row k) dotted
    with xq[xo:xo+32]."""
    if not (isinstance(g, types.Array) and g.dtype == types.int8 and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        grid = _grid_rows(context, builder, sig.args[0], args[0], args[1:5], 8)
        i32 = ir.IntType(32)
        dv = args[5] if args[5].type.width == 32 else builder.trunc(args[5], i32)
        d4 = builder.bitcast(dv, ir.VectorType(ir.IntType(8), 4))
        delta = builder.shuffle_vector(d4, ir.Constant(d4.type, ir.Undefined),
                                       ir.Constant(ir.VectorType(i32, 32), [j // 8 for j in range(32)]))
        v = builder.add(builder.shl(grid, ir.Constant(V32I8, [3] * 32)), delta)
        x = _load_bytes(context, builder, sig.args[6], args[6], _as_i64(builder, args[7]), 32)
        return _dot_s8s8(builder, v, x)
    return i32x8(g, i0, i1, i2, i3, deltas, xq, xo), codegen


@intrinsic(prefer_literal=True)
def lut4_store(typingctx, w, p, q, qo, lut):  # type: ignore[no-untyped-def]
    """q[qo:qo+32] = table[nibble] of the 16 bytes at w[p], as dot_lut4 reads them."""
    table = _lut_table(w, q, lut)
    if table is None:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, qa, qov = args[:4]
        data = context.make_array(sig.args[2])(context, builder, qa).data
        ptr = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [_as_i64(builder, qov)])
        builder.store(_lut_values(context, builder, sig.args[0], wa, pv, table),
                      builder.bitcast(ptr, V32I8.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(w, p, q, qo, lut), codegen
