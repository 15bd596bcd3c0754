"""Super-block dots of the grid types (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S; IQ1_S
and IQ1_M at the end) with AVX-512 VBMI (Zen 4, Ice Lake and later), as LLVM IR: a super-block's
indices, signs and sub-block scales are taken apart by byte permutes and bit-field
selects on 64-byte vectors, where rows.py (the AVX2 and generic paths) does it index
by index in scalar code, as llama.cpp's AVX2 kernels do.

The grids are looked up by value, not address: each grid row becomes a code of 2 or 3
bits per element (the IQ2 grids use 3 values, the IQ3 grids 8), held as two byte
tables that vpermi2b reads 128 entries at a time (2, 4 or 8 of them and selects on
the index's high bits: 32 or 64 indices per super-block at once). Then per 64
elements: a vpermt2b brings each row's two code bytes into its qword, a
vpmultishiftqb spreads one element's code into each byte, a vpermb turns codes into
magnitudes; the signs (ksigns bytes looked up by vpermi2b, or the file's sign bytes)
are a 64-bit mask under which the activation is negated; one vpdpbusd, and one
vpdpwssd multiplies the int32 sums by their sub-block scales (a sum of 4 products
fits in 16 bits; the scale is the low word of its lane, the high word 0). A gather of
the 8-byte grid rows (vpgatherqq) was tried first: 60% slower on Zen 4.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir
from numallm.kernels.families.iquants.tables import IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS
from numallm.kernels.simd.cpu import target_features
from numallm.kernels.simd.vec import I8, I32, I64, _as_i64, _call, _is_bytes, _load_bytes, i32x8
from numba.extending import intrinsic

V64I8 = ir.VectorType(I8, 64)
V16I32 = ir.VectorType(I32, 16)
V8I64 = ir.VectorType(I64, 8)


def has_vbmi() -> bool:
    """vpermb, vpermi2b, vpmultishiftqb on zmm, and 512-bit VNNI."""
    return {"avx512vbmi", "avx512vnni", "avx512bw"} <= target_features()


def _pick(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, pick: list[int]) -> ir.Value:
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, len(pick)), pick))


def _c8(values: list[int]) -> ir.Constant:
    return ir.Constant(V64I8, [v & 255 for v in values])


def _lookup128(builder: ir.IRBuilder, table: list[int], idx: ir.Value) -> ir.Value:
    """table[idx & 127] bytewise for a 128-byte table (one vpermi2b)."""
    return _call(builder, "llvm.x86.avx512.vpermi2var.qi.512", V64I8, [_c8(table[:64]), idx, _c8(table[64:])])


def _multishift(builder: ir.IRBuilder, ctrl: list[int], data: ir.Value) -> ir.Value:
    """Byte j of qword q: bits ctrl[8q + j] .. + 7 of qword q of data (rotating)."""
    return _call(builder, "llvm.x86.avx512.pmultishift.qb.512", V64I8, [_c8(ctrl), data])


class _Grid:
    """A grid's rows as codes of 2 bits (at most 4 values, 8 per row) or 3 (8 values, 4
    per row) per element, element j at bits `bits` j, split into two byte tables (lo,
    hi), and its values as a 64-byte vpermb table indexed by a code's low 6 bits."""

    def __init__(self, grid) -> None:  # type: ignore[no-untyped-def]
        vals = sorted({int(v) for v in grid.reshape(-1)})
        self.width = int(grid.shape[1])
        self.bits = 2 if len(vals) <= 4 else 3
        assert len(vals) <= 1 << self.bits and self.bits * self.width <= 16
        code = [sum(vals.index(int(row[j])) << (self.bits * j) for j in range(self.width)) for row in grid]
        self.lo, self.hi = [c & 255 for c in code], [c >> 8 for c in code]
        n = 1 << self.bits
        self.values = [vals[i % n] if i % n < len(vals) else 0 for i in range(64)]

    def codes(self, builder: ir.IRBuilder, idx: ir.Value, high: list[ir.Value]) -> tuple[ir.Value, ir.Value]:
        """(lo, hi) code bytes of the rows whose index is, bytewise, idx's low 7 bits
        plus high[i] (<64 x i1>) as bit 7 + i: a vpermi2b per 128 rows, then selects."""
        def look(table: list[int]) -> ir.Value:
            parts = [_lookup128(builder, table[128 * t:128 * t + 128], idx) for t in range(len(table) // 128)]
            for bit in high:
                parts = [builder.select(bit, parts[2 * i + 1], parts[2 * i]) for i in range(len(parts) // 2)]
            return parts[0]
        return look(self.lo), look(self.hi)

    def rows(self, builder: ir.IRBuilder, lo: ir.Value, hi: ir.Value, rows: list[int]) -> ir.Value:
        """<64 x i8>: the grid rows whose codes are bytes rows[i] of lo and hi, in order, as
        magnitudes: one vpermt2b (each row's two code bytes into its qword), one
        vpmultishiftqb (each element's code to a byte), one vpermb (code -> value)."""
        per = 8 // self.width
        pick = [rows[q * per + (j // 2 if j // 2 < per else 0)] + 64 * (j % 2) for q in range(8) for j in range(8)]
        ctrl = [16 * (j // self.width) + self.bits * (j % self.width) for j in range(8)] * 8
        codes = _multishift(builder, ctrl, _pick(builder, lo, hi, pick))
        return _call(builder, "llvm.x86.avx512.permvar.qi.512", V64I8, [_c8(self.values), codes])


def _signed_x(builder: ir.IRBuilder, signs: ir.Value, lane: int, x: ir.Value) -> ir.Value:
    """x negated at element e where bit e of the 64-bit lane `lane` of signs is set (the
    lane as a mask register: no per-byte spread and test)."""
    bits = builder.extract_element(builder.bitcast(signs, V8I64), ir.Constant(I32, lane))
    neg = builder.bitcast(bits, ir.VectorType(ir.IntType(1), 64))
    return builder.select(neg, builder.sub(ir.Constant(V64I8, None), x), x)


def _bit_set(builder: ir.IRBuilder, v: ir.Value, src: list[int], bit: list[int]) -> ir.Value:
    """<64 x i1>: lane e is bit bit[e] of byte src[e] of v."""
    spread = _pick(builder, v, v, src)
    return builder.icmp_unsigned("!=", builder.and_(spread, _c8([1 << b for b in bit])), ir.Constant(V64I8, None))


def _widen(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """A byte vector of up to 64 lanes as <64 x i8> (the rest zero)."""
    n = v.type.count
    return _pick(builder, v, ir.Constant(v.type, None), [i if i < n else n for i in range(64)])


class _Plan:
    """What a type's super-block gives the common dot (_sdot): the grid, its index bytes
    and high bits, the row byte positions of each 64 elements (rows(k)), the sign bytes
    and their positions per 64 elements (sign_at(k)), and the I32x16 of integer scales
    of each 64 elements' vpdpbusd lanes (scale(k))."""

    def __init__(self, grid: _Grid, idx: ir.Value, high: list[ir.Value], rows: Callable[[int], list[int]],
                 signs: ir.Value, sign_at: Callable[[int], list[int]], scale: Callable[[int], ir.Value]) -> None:
        self.grid, self.idx, self.high, self.rows = grid, idx, high, rows
        self.signs, self.sign_at, self.scale = signs, sign_at, scale


def _sdot(name: str, plan):  # type: ignore[no-untyped-def]
    """An intrinsic f(w, p, xq, xo) -> I32x8: over the super-block at w[p], the integer
    scale of each sub-block times its grid dot with xq[xo:xo+256], summed; plan(builder,
    load) -> _Plan, load(off, n) the n bytes at w[p + off]."""
    def typer(typingctx, w, p, xq, xo):  # type: ignore[no-untyped-def]
        if not (_is_bytes(w) and _is_bytes(xq)):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            wa, pv, xa, xov = args

            def load(off: int, n: int) -> ir.Value:
                return _load_bytes(context, builder, sig.args[0], wa, builder.add(_as_i64(builder, pv), ir.Constant(I64, off)), n)

            pl = plan(builder, load)
            lo, hi = pl.grid.codes(builder, pl.idx, pl.high)
            # The sign bytes of the 32 groups in order from an aligned byte: each 64
            # elements' signs are then one 64-bit lane.
            order = [m for k in range(4) for m in pl.sign_at(k)]
            signs, first = pl.signs, order[0] // 8
            if order != list(range(order[0], order[0] + 32)) or order[0] % 8:
                signs, first = _pick(builder, signs, signs, order + order), 0
            acc = ir.Constant(V16I32, None)
            for k in range(4):
                rows = pl.grid.rows(builder, lo, hi, pl.rows(k))
                xo = builder.add(_as_i64(builder, xov), ir.Constant(I64, 64 * k))
                x = _load_bytes(context, builder, sig.args[2], xa, xo, 64)
                d = _call(builder, "llvm.x86.avx512.vpdpbusd.512", V16I32,
                          [ir.Constant(V16I32, None), builder.bitcast(rows, V16I32),
                           builder.bitcast(_signed_x(builder, signs, first + k, x), V16I32)])
                acc = _call(builder, "llvm.x86.avx512.vpdpwssd.512", V16I32, [acc, d, pl.scale(k)])
            return builder.add(_pick(builder, acc, acc, list(range(8))), _pick(builder, acc, acc, list(range(8, 16))))
        return i32x8(w, p, xq, xo), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


def _odd_scales(builder: ir.IRBuilder, load, off: int, n: int) -> ir.Value:  # type: ignore[no-untyped-def]
    """<16 x i32>: 2 s + 1 (or 1 + 2 s) of the 2n 4-bit scales in the n bytes at off, low
    nibble first."""
    raw = load(off, n)
    vty = raw.type
    lo = builder.and_(raw, ir.Constant(vty, [15] * n))
    hi = builder.lshr(raw, ir.Constant(vty, [4] * n))
    both = _pick(builder, lo, hi, [i // 2 + (n if i % 2 else 0) for i in range(2 * n)])
    wide = builder.zext(_pick(builder, both, both, [min(i, 2 * n - 1) for i in range(16)]), V16I32)
    return builder.or_(builder.shl(wide, ir.Constant(V16I32, [1] * 16)), ir.Constant(V16I32, [1] * 16))


_KSIGNS = [int(v) for v in KSIGNS]
_G2XXS, _G2XS, _G2S, _G3XXS, _G3S = (_Grid(g) for g in (IQ2XXS_GRID, IQ2XS_GRID, IQ2S_GRID, IQ3XXS_GRID, IQ3S_GRID))


def _neg(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """<64 x i1>: bit 7 of each byte of v."""
    return builder.icmp_signed("<", v, ir.Constant(V64I8, None))


def _plan_iq2_xxs(builder, load):  # type: ignore[no-untyped-def]
    # qs, 64 bytes at 2: per sub-block a qword, 4 grid indices in its low dword, 4 x 7
    # ksigns bits and the scale ls (top 4 bits) in the high one.
    qs = load(2, 64)
    signs = _lookup128(builder, _KSIGNS, _multishift(builder, [32 + 7 * (j % 4) for j in range(64)], qs))
    scale = builder.bitcast(builder.or_(builder.lshr(builder.bitcast(qs, V8I64), ir.Constant(V8I64, [59] * 8)),
                                        ir.Constant(V8I64, [1] * 8)), V16I32)

    def at(k: int) -> list[int]:
        return [8 * (2 * k + g // 4) + g % 4 for g in range(8)]
    return _Plan(_G2XXS, qs, [_neg(builder, qs)], at, signs, at,
                 lambda k: _pick(builder, scale, scale, [2 * (2 * k + lane // 8) for lane in range(16)]))


def _plan_iq3_xxs(builder, load):  # type: ignore[no-untyped-def]
    # 64 grid indices (rows of 4) at 2, then per sub-block a uint32 of 4 x 7 ksigns bits
    # and the scale ls (top 4 bits).
    qs = load(2, 64)
    a = _widen(builder, load(66, 32))
    fields = _multishift(builder, [7 * j if j < 4 else 32 + 7 * (j - 4) for j in range(8)] * 8, a)
    signs = _lookup128(builder, _KSIGNS, fields)  # byte m: group m
    a32 = builder.bitcast(a, V16I32)
    scale = builder.or_(builder.lshr(a32, ir.Constant(V16I32, [27] * 16)), ir.Constant(V16I32, [1] * 16))
    return _Plan(_G3XXS, qs, [_neg(builder, qs)], lambda k: [16 * k + i for i in range(16)], signs,
                 lambda k: [8 * k + g for g in range(8)],
                 lambda k: _pick(builder, scale, scale, [2 * k + lane // 8 for lane in range(16)]))


def _plan_iq2_xs(builder, load):  # type: ignore[no-untyped-def]
    # 32 uint16 at 2: a 9-bit grid index and 7 ksigns bits per group of 8; 8 bytes of two
    # 4-bit scales (per 16 elements) at 66. Group m's index and signs go to byte 2m.
    qs = load(2, 64)
    bit8 = _neg(builder, builder.bitcast(builder.lshr(builder.bitcast(qs, ir.VectorType(ir.IntType(16), 32)),
                                                      ir.Constant(ir.VectorType(ir.IntType(16), 32), [1] * 32)), V64I8))
    signs = _lookup128(builder, _KSIGNS, _multishift(builder, [16 * (j // 2) + 9 for j in range(8)] * 8, qs))
    scale = _odd_scales(builder, load, 66, 8)
    return _Plan(_G2XS, qs, [_neg(builder, qs), bit8], lambda k: [2 * (8 * k + g) for g in range(8)], signs,
                 lambda k: [2 * (8 * k + g) for g in range(8)],
                 lambda k: _pick(builder, scale, scale, [4 * k + lane // 4 for lane in range(16)]))


def _plan_iq2_s(builder, load):  # type: ignore[no-untyped-def]
    # 32 low index bytes at 2, 32 sign bytes at 34 (one per group of 8), 8 bytes of the
    # 2 high index bits per group at 66, two 4-bit scales per 32 at 74.
    qs = load(2, 64)
    qh = _widen(builder, load(66, 8))
    src = [min(g, 31) // 4 for g in range(64)]
    high = [_neg(builder, qs), _bit_set(builder, qh, src, [2 * (g % 4) for g in range(64)]),
            _bit_set(builder, qh, src, [2 * (g % 4) + 1 for g in range(64)])]
    scale = _odd_scales(builder, load, 74, 8)
    return _Plan(_G2S, qs, high, lambda k: [8 * k + g for g in range(8)], qs,
                 lambda k: [32 + 8 * k + g for g in range(8)],
                 lambda k: _pick(builder, scale, scale, [4 * k + lane // 4 for lane in range(16)]))


def _plan_iq3_s(builder, load):  # type: ignore[no-untyped-def]
    # 64 low index bytes (rows of 4) at 2, 8 bytes of their 9th bits at 66, 32 sign bytes
    # (a bit per element) at 74, 4 bytes of two 4-bit scales (per 32) at 106.
    qs = load(2, 64)
    qh = _widen(builder, load(66, 8))
    high = [_neg(builder, qs), _bit_set(builder, qh, [r // 8 for r in range(64)], [r % 8 for r in range(64)])]
    signs = _widen(builder, load(74, 32))
    scale = _odd_scales(builder, load, 106, 4)
    return _Plan(_G3S, qs, high, lambda k: [16 * k + i for i in range(16)], signs,
                 lambda k: [8 * k + g for g in range(8)],
                 lambda k: _pick(builder, scale, scale, [2 * k + lane // 8 for lane in range(16)]))


sdot_iq2_xxs = _sdot("sdot_iq2_xxs", _plan_iq2_xxs)
sdot_iq2_xs = _sdot("sdot_iq2_xs", _plan_iq2_xs)
sdot_iq2_s = _sdot("sdot_iq2_s", _plan_iq2_s)
sdot_iq3_xxs = _sdot("sdot_iq3_xxs", _plan_iq3_xxs)
sdot_iq3_s = _sdot("sdot_iq3_s", _plan_iq3_s)


# IQ1_S and IQ1_M: a 2048-row grid of {-1, 0, 1}, too large for code tables (16
# vpermi2b per table and 15 selects), so its rows are loaded, 32 scalar loads per
# super-block from a table of the values 8 g + delta (delta +-1 per 8 elements, its sign
# the index's bit 11: 4096 rows, rows._IQ1S_VALUES). Each value is odd, never 0: its
# magnitude goes into vpdpbusd and its sign (vpmovb2m) onto the activation. The loads
# are half of the time; vpgatherqq and rows stored to the stack and reloaded as
# vectors were no faster (benchmarks/README.md, round ten).

def _grid_rows(builder: ir.IRBuilder, base: ir.Value, idx: ir.Value, k: int) -> ir.Value:
    """<64 x i8>: the 8-byte rows idx[8k .. 8k+7] (<32 x i16>) of the table at base, by
    scalar loads (each index a vpextrw)."""
    table = builder.bitcast(base, I64.as_pointer())
    rows = ir.Constant(V8I64, None)
    for j in range(8):
        i = builder.zext(builder.extract_element(idx, ir.Constant(I32, 8 * k + j)), I64)
        rows = builder.insert_element(rows, builder.load(builder.gep(table, [i]), align=1), ir.Constant(I32, j))
    return builder.bitcast(rows, V64I8)


def _shr16(builder: ir.IRBuilder, v: ir.Value, counts: list[int], mask: int) -> ir.Value:
    """(v >> counts) & mask lane-wise on a <32 x i16>."""
    ty = ir.VectorType(ir.IntType(16), 32)
    return builder.and_(builder.lshr(v, ir.Constant(ty, counts)), ir.Constant(ty, [mask] * 32))


def _sdot1(name: str, plan):  # type: ignore[no-untyped-def]
    """An intrinsic f(w, p, xq, xo, g8) -> I32x8 as _sdot's for IQ1_S / IQ1_M, g8 the
    rows 8 g + delta (bytes, 4096 rows of 8); plan(builder, load) -> (idx, scale): the
    32 row indices (<32 x i16>, the delta's sign as bit 11) and scale(k), the I32x16
    of integer scales of the k-th 64 elements' vpdpbusd lanes."""
    def typer(typingctx, w, p, xq, xo, g8):  # type: ignore[no-untyped-def]
        if not (_is_bytes(w) and _is_bytes(xq) and _is_bytes(g8)):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            wa, pv, xa, xov, ga = args

            def load(off: int, n: int) -> ir.Value:
                return _load_bytes(context, builder, sig.args[0], wa, builder.add(_as_i64(builder, pv), ir.Constant(I64, off)), n)

            idx, scale = plan(builder, load)
            base = builder.bitcast(context.make_array(sig.args[4])(context, builder, ga).data, I8.as_pointer())
            acc = ir.Constant(V16I32, None)
            for k in range(4):
                v = _grid_rows(builder, base, idx, k)
                neg = builder.icmp_signed("<", v, ir.Constant(V64I8, None))
                mag = builder.select(neg, builder.sub(ir.Constant(V64I8, None), v), v)
                x = _load_bytes(context, builder, sig.args[2], xa, builder.add(_as_i64(builder, xov), ir.Constant(I64, 64 * k)), 64)
                xs = builder.select(neg, builder.sub(ir.Constant(V64I8, None), x), x)
                d = _call(builder, "llvm.x86.avx512.vpdpbusd.512", V16I32,
                          [ir.Constant(V16I32, None), builder.bitcast(mag, V16I32), builder.bitcast(xs, V16I32)])
                acc = _call(builder, "llvm.x86.avx512.vpdpwssd.512", V16I32, [acc, d, scale(k)])
            return builder.add(_pick(builder, acc, acc, list(range(8))), _pick(builder, acc, acc, list(range(8, 16))))
        return i32x8(w, p, xq, xo, g8), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


def _odd16(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """<16 x i32>: 2 v + 1 of the first 16 lanes of a <32 x i16>."""
    wide = builder.zext(_pick(builder, v, v, list(range(16))), V16I32)
    return builder.or_(builder.shl(wide, ir.Constant(V16I32, [1] * 16)), ir.Constant(V16I32, [1] * 16))


def _plan_iq1_s(builder, load):  # type: ignore[no-untyped-def]
    # 32 low index bytes at 2, then per sub-block a uint16: 4 x 3 high index bits, the
    # 3-bit scale ls at bit 12, the delta's sign at bit 15 (row bit 11).
    i16 = ir.IntType(16)
    low = builder.zext(load(2, 32), ir.VectorType(i16, 32))
    qh = builder.bitcast(load(34, 16), ir.VectorType(i16, 8))
    per_group = _pick(builder, qh, qh, [g // 4 for g in range(32)])
    high = builder.or_(_shr16(builder, per_group, [3 * (g % 4) for g in range(32)], 7),
                       builder.and_(builder.lshr(per_group, ir.Constant(per_group.type, [12] * 32)),
                                    ir.Constant(per_group.type, [8] * 32)))
    idx = builder.or_(low, builder.shl(high, ir.Constant(ir.VectorType(i16, 32), [8] * 32)))
    scale = _odd16(builder, _shr16(builder, _pick(builder, qh, qh, [min(i, 7) for i in range(32)]), [12] * 32, 7))
    return idx, lambda k: _pick(builder, scale, scale, [2 * k + lane // 8 for lane in range(16)])


def _plan_iq1_m(builder, load):  # type: ignore[no-untyped-def]
    # 32 low index bytes at 0; a nibble per group at 32 (3 high index bits, the delta's
    # sign at bit 3: the row's bits 8-11 as they are); 4 uint16 at 48 of 4 x 3-bit
    # scales per 16 elements (and d's bits).
    i16 = ir.IntType(16)
    low = builder.zext(load(0, 32), ir.VectorType(i16, 32))
    qh = builder.zext(load(32, 16), ir.VectorType(i16, 16))
    nib = _shr16(builder, _pick(builder, qh, qh, [g // 2 for g in range(32)]), [4 * (g % 2) for g in range(32)], 15)
    idx = builder.or_(low, builder.shl(nib, ir.Constant(nib.type, [8] * 32)))
    sc = builder.bitcast(load(48, 8), ir.VectorType(i16, 4))
    scale = _odd16(builder, _shr16(builder, _pick(builder, sc, sc, [min(m, 15) // 4 for m in range(32)]),
                                   [3 * (m % 4) for m in range(32)], 7))
    return idx, lambda k: _pick(builder, scale, scale, [4 * k + lane // 4 for lane in range(16)])


sdot_iq1_s = _sdot1("sdot_iq1_s", _plan_iq1_s)
sdot_iq1_m = _sdot1("sdot_iq1_m", _plan_iq1_m)
