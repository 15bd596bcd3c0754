"""One record per GGML type the kernels handle (in the spirit of ggml's type_traits_cpu),
and everything generated from them: the supported codes, block geometry, layouts, and
the per-type tables of the drivers (kernels/drivers/) and entry points (kernels/jit.py).

A record names its type's entry points in its family module (kernels/families/), each
taking the type code first so that kernels/drivers/by_type.py can carry it down as a
Numba literal:
  decode  (qc, w, o, nb, y): nb blocks at byte o of w -> float32 y, for rows outside
          tiles; None: d * q + m through `unpack` (the reference computes it so).
  unpack  (qc, w, o, nb, q32, d, m, st, lane): byte quants with a scale and offset per
          `sub_size` elements, for the int8 GEMM (drivers/unpack.py).
  dot     (qc, w, rb, nb, xq, xd, xs, xs16, out, r0, r1): rows [r0, r1) . one int8
          token (drivers/actq.py); None for the float types, whose x stays float32.
  dot2, dot4 (qc, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1): 2 and 4 tokens at
          once, bit-identical to `dot` per token; None: `dot` once per token.
  tiles   (qc, w, rb, nb, full, xq, xd, xs, xs16, out, r0, r1): every token through the
          rows in tiles (layout TILED), bit-identical whatever the batch.
Plain values are the rest: layout (IN_FILE, REGROUPED, TILED), the grouped fields,
the tile kind, whether a token gets the same bits in a batch of any size
(batch_invariant), and how the activation is quantized for the type (q8_k: llama.cpp's
q8_K, a scale per 256 elements, where ggml's vec_dot_type is Q8_K and numallm pairs
it alike; else blocks of 32, drivers/actq.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm.kernels.families import floats
from numallm.kernels.families.iquants import blocks as iqb
from numallm.kernels.families.iquants import rows as iq
from numallm.kernels.families.iquants import ternary as tq
from numallm.kernels.families.iquants import tiles as iqt
from numallm.kernels.families.kquants import rows as kq
from numallm.kernels.families.kquants import tiles as kqt
from numallm.kernels.families.q4_q8 import rows as q48
from numallm.kernels.families.q4_q8 import tiles
from numallm.kernels.simd.cpu import has_vnni256
from numba import njit

IN_FILE, REGROUPED, TILED = "in file", "regrouped", "tiled"  # as stored, by groups of 8 blocks, tiles of 16 rows


@dataclass(frozen=True)
class TypeTraits:
    qtype: T
    layout: str
    decode: Callable[..., None] | None = None
    unpack: Callable[..., None] | None = None
    sub_size: int = 32
    dot: Callable[..., None] | None = None
    dot2: Callable[..., None] | None = None
    dot4: Callable[..., None] | None = None
    tiles: Callable[..., None] | None = None
    tile_kind: int = -1                          # families/q4_q8/tiles.py kind, -1 without tiles
    grouped: tuple[tuple[int, ...], bool] | None = None  # (field widths before the quants, nibbles)
    batch_invariant: bool = False
    q8_k: bool = False  # x as llama.cpp's q8_K (a scale per 256), its vec_dot_type here; else q8_0

    @property
    def code(self) -> int:
        return int(self.qtype)

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def block_bytes(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    @property
    def is_float(self) -> bool:
        """x stays float32 (no int8 dot): matvec by families/floats.py, matmul by the float GEMM."""
        return self.dot is None


def _float(qtype: T, decode: Callable[..., None]) -> TypeTraits:
    return TypeTraits(qtype, IN_FILE, decode=lambda qc, w, o, nb, y: decode(w, o, nb, y))


def _q4(qtype: T, kind: int, unpack: Callable[..., None], dot: Callable[..., None],
        fields: tuple[int, ...]) -> TypeTraits:
    """Q4_0, Q4_1: tiles of 16 rows, a matrix's last rows % 16 grouped."""
    return TypeTraits(qtype, TILED, unpack=unpack, dot=dot, tiles=tiles.tile_rows_impl(kind), tile_kind=kind,
                      grouped=(fields, True), batch_invariant=True)


def _q5(qtype: T, unpack: Callable[..., None], dot: Callable[..., None], dot2: Callable[..., None],
        dot4: Callable[..., None], fields: tuple[int, ...]) -> TypeTraits:
    """Q5_0, Q5_1: grouped, with their own 2- and 4-token dots."""
    return TypeTraits(qtype, REGROUPED, unpack=unpack, dot=dot, dot2=dot2, dot4=dot4, grouped=(fields, True))


def _kquant(qtype: T, sub_size: int, unpack: Callable[..., None], dot: Callable[..., None],
            decode: Callable[..., None] | None = None) -> TypeTraits:
    return TypeTraits(qtype, IN_FILE, decode=decode, unpack=unpack, sub_size=sub_size, dot=dot)


def _kquant_tiled(qtype: T, kind: int, five: bool) -> TypeTraits:
    """Q4_K, Q5_K: tiles of 16 rows (families/kquants/tiles.py); a matrix's last rows % 16
    stay in the file's layout and take the row kernel."""
    return TypeTraits(
        qtype, TILED,
        unpack=lambda qc, w, o, nb, q32, d, m, st, lane: kq.unpack_q45_k(w, o, nb, q32, d, m, st, lane, five),
        dot=lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: kq.rows_q45_k(w, rb, nb, five, xq, xd, xs, out, r0, r1),
        tiles=kqt.kq_tiles(int(qtype)), tile_kind=kind, batch_invariant=True, q8_k=True)


def _iquant(qtype: T, unpack: Callable[..., None], dot: Callable[..., None], sub_size: int, off: int,
            q8_k: bool = True) -> TypeTraits:
    """The i-quants, TQ1_0, TQ2_0, MXFP4 (families/iquants/): in file layout, decoded by
    the block's unpack_* (int8 values times a factor per 16), the GEMM's form q + off
    (off: the type's largest |q|). IQ4_NL and IQ4_XS need off = 128, whose byte pairs
    vpmaddubsw would saturate: without VNNI they have no GEMM form (matmul takes the
    row dots)."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    gemm = off < 128 or has_vnni256()
    return TypeTraits(
        qtype, IN_FILE,
        decode=lambda qc, w, o, nb, y: iqb.decode_blocks(unpack, bs, ts, w, o, nb, y),
        unpack=(lambda qc, w, o, nb, q32, d, m, st, lane:
                iqb.unpack_words(unpack, bs, ts, w, o, nb, q32, d, m, st, lane, sub_size, off)) if gemm else None,
        sub_size=sub_size, dot=dot, q8_k=q8_k)


def _iquant_tiled(t: TypeTraits, kind: int, pass_: Callable[..., None]) -> TypeTraits:
    """IQ4_NL, MXFP4, IQ4_XS, TQ2_0: tiles of 16 rows (families/q4_q8/tiles.py, IQ4_XS's
    families/iquants/tiles.py, TQ2_0's families/iquants/ternary.py); a matrix's last
    rows % 16 stay in the file's layout and take the row dots."""
    return replace(t, layout=TILED, tiles=pass_, tile_kind=kind, batch_invariant=True)


TRAITS: tuple[TypeTraits, ...] = (
    _float(T.F32, floats.decode_f32),
    _float(T.F16, floats.decode_f16),
    _float(T.BF16, floats.decode_bf16),
    _q4(T.Q4_0, tiles.Q4_0_KIND,
        lambda qc, w, o, nb, q32, d, m, st, lane: q48.unpack_q45(w, o, nb, q32, d, m, st, lane, False, False),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: q48.rows_q45(w, rb, nb, False, False, xq, xd, xs, out, r0, r1),
        (2,)),
    _q4(T.Q4_1, tiles.Q4_1_KIND,
        lambda qc, w, o, nb, q32, d, m, st, lane: q48.unpack_q45(w, o, nb, q32, d, m, st, lane, True, False),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: q48.rows_q45(w, rb, nb, True, False, xq, xd, xs, out, r0, r1),
        (2, 2)),
    _q5(T.Q5_0,
        lambda qc, w, o, nb, q32, d, m, st, lane: q48.unpack_q45(w, o, nb, q32, d, m, st, lane, False, True),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: q48.rows_q45(w, rb, nb, False, True, xq, xd, xs, out, r0, r1),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: q48.rows_q45_x2(w, rb, nb, False, True, xq, xd, xs, out, t0, r0, r1),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: q48.rows_q45_x4(w, rb, nb, False, True, xq, xd, xs, out, t0, r0, r1),
        (2, 4)),
    _q5(T.Q5_1,
        lambda qc, w, o, nb, q32, d, m, st, lane: q48.unpack_q45(w, o, nb, q32, d, m, st, lane, True, True),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: q48.rows_q45(w, rb, nb, True, True, xq, xd, xs, out, r0, r1),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: q48.rows_q45_x2(w, rb, nb, True, True, xq, xd, xs, out, t0, r0, r1),
        lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: q48.rows_q45_x4(w, rb, nb, True, True, xq, xd, xs, out, t0, r0, r1),
        (2, 2, 4)),
    TypeTraits(T.Q8_0, TILED,
               decode=lambda qc, w, o, nb, y: q48.decode_q8_0(w, o, nb, y),
               dot=lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: q48.rows_q8_0(w, rb, nb, xq, xd, out, r0, r1),
               tiles=tiles.tile_rows_impl(tiles.Q8_0_KIND), tile_kind=tiles.Q8_0_KIND,
               grouped=((2,), False), batch_invariant=True),
    _kquant(T.Q2_K, 16,
            lambda qc, w, o, nb, q32, d, m, st, lane: kq.unpack_q2_k(w, o, nb, q32, d, m, st, lane),
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: kq.rows_q23_k(w, rb, nb, False, xq, xd, xs16, out, r0, r1)),
    _kquant(T.Q3_K, 16,
            lambda qc, w, o, nb, q32, d, m, st, lane: kq.unpack_q3_k(w, o, nb, q32, d, m, st, lane),
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: kq.rows_q23_k(w, rb, nb, True, xq, xd, xs16, out, r0, r1),
            lambda qc, w, o, nb, y: kq.decode_q3_k(w, o, nb, y)),
    _kquant_tiled(T.Q4_K, tiles.Q4_K_KIND, False),
    _kquant_tiled(T.Q5_K, tiles.Q5_K_KIND, True),
    TypeTraits(T.Q6_K, TILED,  # a matrix's last rows % 16 stay in the file's layout
               decode=lambda qc, w, o, nb, y: kq.decode_q6_k(w, o, nb, y),
               unpack=lambda qc, w, o, nb, q32, d, m, st, lane: kq.unpack_q6_k(w, o, nb, q32, d, m, st, lane),
               sub_size=16,
               dot=lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: kq.rows_q6_k(w, rb, nb, xq, xd, xs16, out, r0, r1),
               tiles=kqt.kq_tiles(int(T.Q6_K)), tile_kind=tiles.Q6_K_KIND, batch_invariant=True, q8_k=True),
    _iquant(T.IQ1_S, iqb.unpack_iq1_s,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq1_s(w, rb, nb, xq, xd, out, r0, r1), 32, 9),
    _iquant(T.IQ1_M, iqb.unpack_iq1_m,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq1_m(w, rb, nb, xq, xd, out, r0, r1), 16, 9),
    _iquant(T.IQ2_XXS, iqb.unpack_iq2_xxs,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq2_xxs(w, rb, nb, xq, xd, out, r0, r1), 32, 43),
    _iquant(T.IQ2_XS, iqb.unpack_iq2_xs,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq2_xs(w, rb, nb, False, xq, xd, out, r0, r1),
            16, 43),
    _iquant(T.IQ2_S, iqb.unpack_iq2_s,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq2_xs(w, rb, nb, True, xq, xd, out, r0, r1),
            16, 43),
    _iquant(T.IQ3_XXS, iqb.unpack_iq3_xxs,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq3_xxs(w, rb, nb, xq, xd, out, r0, r1), 32, 62),
    _iquant(T.IQ3_S, iqb.unpack_iq3_s,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: iq.rows_iq3_s(w, rb, nb, xq, xd, out, r0, r1), 32, 15),
    _iquant_tiled(_iquant(T.IQ4_NL, iqb.unpack_iq4_nl,
                          lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1:
                          iq.rows_iq4_nl(w, rb, nb, False, xq, xd, out, r0, r1), 32, 128, q8_k=False),
                  tiles.IQ4_NL_KIND, tiles.tile_rows_impl(tiles.IQ4_NL_KIND)),
    _iquant_tiled(_iquant(T.IQ4_XS, iqb.unpack_iq4_xs,
                          lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1:
                          iq.rows_iq4_xs(w, rb, nb, xq, xd, out, r0, r1), 32, 128),
                  tiles.IQ4_XS_KIND, tiles.tile_rows_of(iqt.iq4xs_tile_kernel, tiles.IQ4_XS_KIND)),
    _iquant(T.TQ1_0, iqb.unpack_tq1_0,
            lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: tq.rows_tq1_0(w, rb, nb, xq, xd, xs, out, r0, r1), 32, 1),
    _iquant_tiled(_iquant(T.TQ2_0, iqb.unpack_tq2_0,
                          lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1:
                          tq.rows_tq2_0(w, rb, nb, xq, xd, xs, out, r0, r1), 32, 1),
                  tiles.TQ2_0_KIND, tiles.tile_rows_of(tq.tq2_tile_kernel, tiles.TQ2_0_KIND)),
    _iquant_tiled(_iquant(T.MXFP4, iqb.unpack_mxfp4,
                          lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1:
                          iq.rows_iq4_nl(w, rb, nb, True, xq, xd, out, r0, r1), 32, 12, q8_k=False),
                  tiles.MXFP4_KIND, tiles.tile_rows_impl(tiles.MXFP4_KIND)),
)

BY_TYPE: dict[T, TypeTraits] = {t.qtype: t for t in TRAITS}
CODES: tuple[int, ...] = tuple(t.code for t in TRAITS)
QUANT_CODES: tuple[int, ...] = tuple(t.code for t in TRAITS if not t.is_float)
# Regrouped at load (families/q4_q8/grouped.py): the tiled types' last rows % 16 too.
GROUPED: dict[T, tuple[tuple[int, ...], bool]] = {t.qtype: t.grouped for t in TRAITS if t.grouped}
TILED_KINDS: dict[T, int] = {t.qtype: t.tile_kind for t in TRAITS if t.layout == TILED}


def batch_invariant(qtypes: Iterable[T | int]) -> bool:
    """Does every token get the same bits in a batch of any size, for matrices of these
    types? (True for the tiled types: their kernel runs each token alone.)"""
    return all(BY_TYPE[T(q)].batch_invariant for q in qtypes)


# Per-code tables as global arrays: constants of the compiled code, so a literal code
# folds to a constant and a runtime one costs one load instead of a branch chain.
# (block size, bytes per block, sub_size, tile kind, q8_k); zeros and -1 for unsupported codes.
_BY_CODE = np.zeros((max(CODES) + 1, 5), np.int64)
_BY_CODE[:, 3] = -1
for _t in TRAITS:
    _BY_CODE[_t.code] = (_t.block_size, _t.block_bytes, _t.sub_size, _t.tile_kind, _t.q8_k)


@njit(inline="always", cache=True)
def geometry(qcode):  # type: ignore[no-untyped-def]
    """(block size, bytes per block) of a GGML type code; (0, 0) if unsupported."""
    if qcode < 0 or qcode >= _BY_CODE.shape[0]:
        return 0, 0
    return _BY_CODE[qcode, 0], _BY_CODE[qcode, 1]


@njit(inline="always", cache=True)
def row_geometry(qcode, cols):  # type: ignore[no-untyped-def]
    """(blocks per row, bytes per row) of a row of `cols` elements."""
    nb = cols // geometry(qcode)[0]
    return nb, nb * geometry(qcode)[1]


@njit(inline="always", cache=True)
def sub_size(qcode):  # type: ignore[no-untyped-def]
    """Elements per scale of the unpacked form (drivers/unpack.py)."""
    return _BY_CODE[qcode, 2]


@njit(inline="always", cache=True)
def q8_k(qcode):  # type: ignore[no-untyped-def]
    """Is the activation quantized as q8_K (a scale per 256) for this type?"""
    return _BY_CODE[qcode, 4] == 1


@njit(inline="always", cache=True)
def tile_kind(qcode):  # type: ignore[no-untyped-def]
    """The families/q4_q8/tiles.py kind of a type with a tiled layout."""
    return _BY_CODE[qcode, 3]


@njit(inline="always", cache=True)
def tiled_part(qcode, rows):  # type: ignore[no-untyped-def]
    """Rows [0, tiled_part) of a matrix of this type are in tiles; 0 for the types
    without a tiled layout."""
    if _BY_CODE[qcode, 3] >= 0:
        return rows - rows % tiles.TILE
    return 0
