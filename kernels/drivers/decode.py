"""Packed rows -> float32, one row at a time: decode_row and get_rows.

Each record's `decode` (kernels/traits.py) turns the `nb` consecutive blocks at byte
offset `o` of the uint8 buffer `w` into y[0 : nb * block_size], bit for bit what
gguf.quants (ggml's reference dequantizers) computes; the tests compare. The types
whose reference is d * q + m per sub-block have none and go through
drivers/unpack.py (the int8 GEMM's form of a row) in decode_affine. Rows in tiles
are decoded by families/q4_q8/tiles.py (the K-quants' by families/kquants/tiles.py,
IQ4_XS's by families/iquants/tiles.py).
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.drivers.by_type import by_type
from numallm.kernels.drivers.unpack import unpack_row
from numallm.kernels.families.iquants.ternary import decode_tiled_tq2
from numallm.kernels.families.iquants.tiles import decode_tiled_iq4xs
from numallm.kernels.families.kquants.tiles import decode_tiled_kq, decode_tiled_q6k
from numallm.kernels.families.q4_q8.tiles import (
    IQ4_XS_KIND,
    Q4_K_KIND,
    Q5_K_KIND,
    Q6_K_KIND,
    TILE,
    TQ2_0_KIND,
    decode_tiled,
)
from numallm.kernels.traits import TRAITS, geometry, row_geometry, sub_size, tile_kind, tiled_part
from numba import njit


@njit(nogil=True, cache=True)
def decode_affine(qcode, w, o, nb, y):  # type: ignore[no-untyped-def]
    """The types whose values are d * q + m per sub-block as their reference computes
    them (no `decode` in their record), through drivers/unpack.py."""
    cols = nb * geometry(qcode)[0]
    S = sub_size(qcode)
    q = np.empty(cols, np.uint8)
    d = np.empty(cols // S, np.float32)
    m = np.empty(cols // S, np.float32)
    unpack_row(qcode, w, o, nb, q, d, m)
    for k in range(cols):
        y[k] = d[k // S] * np.float32(q[k]) + m[k // S]


def _decode_affine(qc, w, o, nb, y):  # type: ignore[no-untyped-def]
    decode_affine(qc, w, o, nb, y)


# Decode `nb` blocks of type `qcode` at byte `o` of `w` into y (float32); see
# drivers/by_type.py for the dispatch.
decode_row = by_type("decode_row", {t.code: t.decode or _decode_affine for t in TRAITS})


@njit(nogil=True, cache=True)
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    full = tiled_part(qcode, rows)
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < 0 or r >= rows:
            raise IndexError("get_rows: row id out of range")
        if r < full and tile_kind(qcode) == Q6_K_KIND:
            decode_tiled_q6k(w, (r - r % TILE) * rb, r % TILE, nb, out[i])
        elif r < full and (tile_kind(qcode) == Q4_K_KIND or tile_kind(qcode) == Q5_K_KIND):
            decode_tiled_kq(tile_kind(qcode) == Q5_K_KIND, w, (r - r % TILE) * rb, r % TILE, nb, out[i])
        elif r < full and tile_kind(qcode) == IQ4_XS_KIND:
            decode_tiled_iq4xs(w, (r - r % TILE) * rb, r % TILE, nb, out[i])
        elif r < full and tile_kind(qcode) == TQ2_0_KIND:
            decode_tiled_tq2(w, (r - r % TILE) * rb, r % TILE, nb, out[i])
        elif r < full:
            decode_tiled(tile_kind(qcode), w, (r - r % TILE) * rb, r % TILE, nb, out[i])
        else:
            decode_row(qcode, w, r * rb, nb, out[i])
