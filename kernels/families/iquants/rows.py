"""Row dots of the i-quants and MXFP4 (their records' `dot`; TQ1_0 and TQ2_0 are in
ternary.py): each decodes its blocks in vectors (simd.py; grids.py for the grid
types with AVX-512 VBMI) straight into int8 dot products with the activation,
sums a super-block's sub-blocks in integers times their integer scales, and applies
one float scale per block or super-block.

x comes as drivers/actq.py quantizes it for the type (q8_0 blocks of 32 for IQ4_NL
and MXFP4, q8_K blocks of 256 for the others, as llama.cpp pairs them; xd holds the
scale per 32 elements either way).

Every type shares one loop over rows and blocks (`_row_kernel`); what differs is its
block function, (I32x8 integer dot, float32 scale) of one block, which Numba inlines
into that type's own compiled loop.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.families.iquants.blocks import _EIGHTH, _QUARTER, _u16, half_bits
from numallm.kernels.families.iquants import grids
from numallm.kernels.families.iquants.simd import (
    LUT_IQ4NL,
    LUT_MXFP4,
    dot_grid1,
    dot_grid4,
    dot_grid8,
    dot_lut4,
    izero,
    vimadd,
    vimadd2,
)
from numallm.kernels.families.iquants.tables import (
    E8M0_HALF,
    IQ1S_GRID,
    IQ2S_GRID,
    IQ2XS_GRID,
    IQ2XXS_GRID,
    IQ3S_GRID,
    IQ3XXS_GRID,
    KSIGNS,
)
from numallm.kernels.simd.scalar import at, load_f16, load_u32
from numallm.kernels.simd.vec import vfma, vhsum, vzero
from numba import njit
from numba.extending import register_jitable


def _row_kernel(block, size: int):  # type: ignore[no-untyped-def]
    """rows(w, rb, nb, xq, xd, out, r0, r1): out[r] = the dot of row r (rb bytes, nb
    blocks of `size` bytes) with the activation, for r in r0..r1, from
    block(w, p, b, xq, xd) -> (isum, scale) of the block at byte p, block number b.
    block stays a plain function (register_jitable, not a dispatcher) because Numba's
    cache keys a closure by its pickled cells, and a dispatcher pickles with a fresh
    uuid per process: every start would miss the cache."""
    register_jitable(inline="always")(block)

    @njit(nogil=True, cache=True)
    def rows(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
        for r in range(r0, r1):
            acc = vzero()
            for b in range(nb):
                isum, scale = block(w, r * rb + size * b, b, xq, xd)
                acc = vfma(acc, isum, scale)
            out[r] = vhsum(acc)
    rows.__doc__ = block.__doc__
    return rows


def _iq4_nl(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ4_NL: per block of 32 one table dot and one scale."""
    return dot_lut4(w, p + 2, xq, 32 * b, LUT_IQ4NL), load_f16(w, p) * at(xd, b)


def _mxfp4(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """MXFP4: as IQ4_NL with its own table and an E8M0 scale."""
    return dot_lut4(w, p + 1, xq, 32 * b, LUT_MXFP4), E8M0_HALF[at(w, p)] * at(xd, b)


_rows_iq4_nl = _row_kernel(_iq4_nl, 18)
_rows_mxfp4 = _row_kernel(_mxfp4, 17)


@njit(nogil=True, cache=True)
def rows_iq4_nl(w, rb, nb, mx, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ4_NL, or MXFP4 (mx)."""
    if mx:
        _rows_mxfp4(w, rb, nb, xq, xd, out, r0, r1)
    else:
        _rows_iq4_nl(w, rb, nb, xq, xd, out, r0, r1)


def _iq4_xs(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ4_XS: a super-block's 8 table dots summed in integers, each times its 6-bit
    scale minus 32, then one float scale d * xd (q8_K: one xd per 256)."""
    sh = _u16(w, p + 2)
    isum = izero()
    for ib in range(8):
        lo = (np.uint32(at(w, p + 4 + ib // 2)) >> np.uint32(4 * (ib % 2))) & np.uint32(15)
        ls = np.int32(lo | (((sh >> np.uint32(2 * ib)) & np.uint32(3)) << np.uint32(4))) - 32
        isum = vimadd(isum, dot_lut4(w, p + 8 + 16 * ib, xq, 256 * b + 32 * ib, LUT_IQ4NL), ls)
    return isum, load_f16(w, p) * at(xd, 8 * b)


rows_iq4_xs = _row_kernel(_iq4_xs, 136)


@njit(inline="always", cache=True)
def _ks4(a):  # type: ignore[no-untyped-def]
    """The 4 sign bytes of the 4 x 7-bit ksigns indices in the low 28 bits of a, as a uint32."""
    return (np.uint32(KSIGNS[a & np.uint32(127)]) | (np.uint32(KSIGNS[(a >> np.uint32(7)) & np.uint32(127)]) << np.uint32(8))
            | (np.uint32(KSIGNS[(a >> np.uint32(14)) & np.uint32(127)]) << np.uint32(16))
            | (np.uint32(KSIGNS[(a >> np.uint32(21)) & np.uint32(127)]) << np.uint32(24)))


@njit(inline="always", cache=True)
def _byte(v, k):  # type: ignore[no-untyped-def]
    return (v >> np.uint32(8 * k)) & np.uint32(255)


def _iq2_xxs(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ2_XXS: per 32 elements one grid dot (4 rows, signs from ksigns) times its
    integer scale 2 ls + 1; per super-block one float scale d * xd / 8."""
    isum = izero()
    for ib in range(8):
        a0 = load_u32(w, p + 2 + 8 * ib)
        a1 = load_u32(w, p + 6 + 8 * ib)
        v = dot_grid8(IQ2XXS_GRID, _byte(a0, 0), _byte(a0, 1), _byte(a0, 2), _byte(a0, 3), _ks4(a1),
                      xq, 256 * b + 32 * ib)
        isum = vimadd(isum, v, np.int32(2 * (a1 >> np.uint32(28)) + 1))
    return isum, load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


# With AVX-512 VBMI a super-block goes through 64-byte vectors (grids.py) instead.

def _iq2_xxs_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ2_XXS."""
    return grids.sdot_iq2_xxs(w, p, xq, 256 * b), load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


def _iq2_xs_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ2_XS."""
    return grids.sdot_iq2_xs(w, p, xq, 256 * b), load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


def _iq2_s_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ2_S."""
    return grids.sdot_iq2_s(w, p, xq, 256 * b), load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


def _iq3_xxs_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ3_XXS."""
    return grids.sdot_iq3_xxs(w, p, xq, 256 * b), load_f16(w, p) * at(xd, 8 * b) * _QUARTER


def _iq3_s_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ3_S."""
    return grids.sdot_iq3_s(w, p, xq, 256 * b), load_f16(w, p) * at(xd, 8 * b)


_VBMI = grids.has_vbmi()
rows_iq2_xxs = _row_kernel(_iq2_xxs_vbmi if _VBMI else _iq2_xxs, 66)


@njit(inline="always", cache=True)
def _xs_group(w, p, g, grid_is_s):  # type: ignore[no-untyped-def]
    """(grid index, sign byte) of group g (8 elements) of an IQ2_XS / IQ2_S block at p."""
    if grid_is_s:
        hi = (np.uint32(at(w, p + 66 + g // 4)) >> np.uint32(2 * (g % 4))) & np.uint32(3)
        return np.uint32(at(w, p + 2 + g)) | (hi << np.uint32(8)), np.uint32(at(w, p + 34 + g))
    v = _u16(w, p + 2 + 2 * g)
    return v & np.uint32(511), np.uint32(KSIGNS[v >> np.uint32(9)])


@njit(inline="always", cache=True)
def _iq2_xs_or_s(w, p, b, xq, xd, two_s):  # type: ignore[no-untyped-def]
    """IQ2_XS, and IQ2_S (two_s): grid dots per 32, each half of 16 times its own
    integer scale 2 ls + 1."""
    so = 74 if two_s else 66
    isum = izero()
    for ib in range(8):
        g0, s0 = _xs_group(w, p, 4 * ib, two_s)
        g1, s1 = _xs_group(w, p, 4 * ib + 1, two_s)
        g2, s2 = _xs_group(w, p, 4 * ib + 2, two_s)
        g3, s3 = _xs_group(w, p, 4 * ib + 3, two_s)
        signs = s0 | (s1 << np.uint32(8)) | (s2 << np.uint32(16)) | (s3 << np.uint32(24))
        if two_s:
            v = dot_grid8(IQ2S_GRID, g0, g1, g2, g3, signs, xq, 256 * b + 32 * ib)
        else:
            v = dot_grid8(IQ2XS_GRID, g0, g1, g2, g3, signs, xq, 256 * b + 32 * ib)
        sc = np.int32(at(w, p + so + ib))
        isum = vimadd2(isum, v, 2 * (sc & 15) + 1, 2 * (sc >> 4) + 1)
    return isum, load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


def _iq2_xs(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ2_XS."""
    return _iq2_xs_or_s(w, p, b, xq, xd, False)


def _iq2_s(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ2_S."""
    return _iq2_xs_or_s(w, p, b, xq, xd, True)


_rows_iq2_xs = _row_kernel(_iq2_xs_vbmi if _VBMI else _iq2_xs, 74)
_rows_iq2_s = _row_kernel(_iq2_s_vbmi if _VBMI else _iq2_s, 82)


@njit(nogil=True, cache=True)
def rows_iq2_xs(w, rb, nb, two_s, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ2_XS, or IQ2_S (two_s). Each has its own compiled loop, in which two_s is a
    constant that Numba folds, instead of a test per group of 8."""
    if two_s:
        _rows_iq2_s(w, rb, nb, xq, xd, out, r0, r1)
    else:
        _rows_iq2_xs(w, rb, nb, xq, xd, out, r0, r1)


def _iq3_xxs(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ3_XXS: per 32 elements a dot of 8 grid rows of 4, scale (2 ls + 1) / 4."""
    isum = izero()
    for ib in range(8):
        i0 = load_u32(w, p + 2 + 8 * ib)
        i1 = load_u32(w, p + 6 + 8 * ib)
        a = load_u32(w, p + 66 + 4 * ib)
        v = dot_grid4(IQ3XXS_GRID, _byte(i0, 0), _byte(i0, 1), _byte(i0, 2), _byte(i0, 3),
                      _byte(i1, 0), _byte(i1, 1), _byte(i1, 2), _byte(i1, 3), _ks4(a), xq, 256 * b + 32 * ib)
        isum = vimadd(isum, v, np.int32(2 * (a >> np.uint32(28)) + 1))
    return isum, load_f16(w, p) * at(xd, 8 * b) * _QUARTER


rows_iq3_xxs = _row_kernel(_iq3_xxs_vbmi if _VBMI else _iq3_xxs, 98)


@njit(inline="always", cache=True)
def _iq3s_index(w, p, ib, k, qh):  # type: ignore[no-untyped-def]
    return np.uint32(at(w, p + 2 + 8 * ib + k)) | (((qh >> np.uint32(k)) & np.uint32(1)) << np.uint32(8))


def _iq3_s(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ3_S: per 32 elements a dot of 8 grid rows of 4 (9-bit indices), signs a bit per
    element, scale 1 + 2 ls."""
    isum = izero()
    for ib in range(8):
        qh = np.uint32(at(w, p + 66 + ib))
        v = dot_grid4(IQ3S_GRID, _iq3s_index(w, p, ib, 0, qh), _iq3s_index(w, p, ib, 1, qh),
                      _iq3s_index(w, p, ib, 2, qh), _iq3s_index(w, p, ib, 3, qh),
                      _iq3s_index(w, p, ib, 4, qh), _iq3s_index(w, p, ib, 5, qh),
                      _iq3s_index(w, p, ib, 6, qh), _iq3s_index(w, p, ib, 7, qh),
                      load_u32(w, p + 74 + 4 * ib), xq, 256 * b + 32 * ib)
        sc = (np.int32(at(w, p + 106 + ib // 2)) >> (4 * (ib % 2))) & 15
        isum = vimadd(isum, v, 1 + 2 * sc)
    return isum, load_f16(w, p) * at(xd, 8 * b)


rows_iq3_s = _row_kernel(_iq3_s_vbmi if _VBMI else _iq3_s, 110)

_DELTA_POS = np.uint32(0x01010101)  # four int8 +1
_DELTA_NEG = np.uint32(0xFFFFFFFF)  # four int8 -1


def _iq1_s(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ1_S: per 32 elements a dot of 8 grid + delta, times 2 ls + 1; d * xd / 8."""
    isum = izero()
    for ib in range(8):
        h = _u16(w, p + 34 + 2 * ib)
        i = load_u32(w, p + 2 + 4 * ib)
        v = dot_grid1(IQ1S_GRID, _byte(i, 0) | ((h & np.uint32(7)) << np.uint32(8)),
                      _byte(i, 1) | (((h >> np.uint32(3)) & np.uint32(7)) << np.uint32(8)),
                      _byte(i, 2) | (((h >> np.uint32(6)) & np.uint32(7)) << np.uint32(8)),
                      _byte(i, 3) | (((h >> np.uint32(9)) & np.uint32(7)) << np.uint32(8)),
                      _DELTA_NEG if h & np.uint32(0x8000) else _DELTA_POS, xq, 256 * b + 32 * ib)
        isum = vimadd(isum, v, np.int32(2 * ((h >> np.uint32(12)) & np.uint32(7)) + 1))
    return isum, load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


def _iq1_s_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ1_S."""
    return grids.sdot_iq1_s(w, p, xq, 256 * b, _IQ1S_VALUES), load_f16(w, p) * at(xd, 8 * b) * _EIGHTH


# The VBMI path's rows 8 g + delta: delta +1 in rows 0-2047, -1 in rows 2048-4095.
_IQ1S_VALUES = np.ascontiguousarray(np.concatenate([IQ1S_GRID * np.int8(8) + np.int8(1),
                                                   IQ1S_GRID * np.int8(8) - np.int8(1)]).reshape(-1))
rows_iq1_s = _row_kernel(_iq1_s_vbmi if _VBMI else _iq1_s, 50)


@njit(inline="always", cache=True)
def _iq1m_group(w, p, g):  # type: ignore[no-untyped-def]
    """(grid index, delta byte as uint32) of group g of the IQ1_M block at p."""
    hn = (np.uint32(at(w, p + 32 + g // 2)) >> np.uint32(4 * (g % 2))) & np.uint32(15)
    return (np.uint32(at(w, p + g)) | ((hn & np.uint32(7)) << np.uint32(8)),
            np.uint32(255) if hn & np.uint32(8) else np.uint32(1))


@njit(inline="always", cache=True)
def _iq1m_scale(w, p, b, xd):  # type: ignore[no-untyped-def]
    """d (its float16 bits the top nibbles of the 4 scale words) * xd / 8 of an IQ1_M block."""
    s0, s1, s2, s3 = _u16(w, p + 48), _u16(w, p + 50), _u16(w, p + 52), _u16(w, p + 54)
    dbits = ((s0 >> np.uint32(12)) | ((s1 >> np.uint32(8)) & np.uint32(0xF0))
             | ((s2 >> np.uint32(4)) & np.uint32(0xF00)) | (s3 & np.uint32(0xF000)))
    return half_bits(dbits) * at(xd, 8 * b) * _EIGHTH


def _iq1_m(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ1_M: as IQ1_S with a delta per 8 elements and a 3-bit scale per 16."""
    s0, s1, s2, s3 = _u16(w, p + 48), _u16(w, p + 50), _u16(w, p + 52), _u16(w, p + 54)
    isum = izero()
    for ib in range(8):
        g0, e0 = _iq1m_group(w, p, 4 * ib)
        g1, e1 = _iq1m_group(w, p, 4 * ib + 1)
        g2, e2 = _iq1m_group(w, p, 4 * ib + 2)
        g3, e3 = _iq1m_group(w, p, 4 * ib + 3)
        v = dot_grid1(IQ1S_GRID, g0, g1, g2, g3,
                      e0 | (e1 << np.uint32(8)) | (e2 << np.uint32(16)) | (e3 << np.uint32(24)),
                      xq, 256 * b + 32 * ib)
        s = s0 if ib < 2 else (s1 if ib < 4 else (s2 if ib < 6 else s3))
        sh = np.uint32(6 * (ib % 2))
        isum = vimadd2(isum, v, np.int32(2 * ((s >> sh) & np.uint32(7)) + 1),
                       np.int32(2 * ((s >> (sh + np.uint32(3))) & np.uint32(7)) + 1))
    return isum, _iq1m_scale(w, p, b, xd)


def _iq1_m_vbmi(w, p, b, xq, xd):  # type: ignore[no-untyped-def]
    """IQ1_M."""
    return grids.sdot_iq1_m(w, p, xq, 256 * b, _IQ1S_VALUES), _iq1m_scale(w, p, b, xd)


rows_iq1_m = _row_kernel(_iq1_m_vbmi if _VBMI else _iq1_m, 56)
