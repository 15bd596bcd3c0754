"""matvec and matmul over quantized types: the records' `tiles` (kernels/traits.py) for
the rows in tiles (every row but a matrix's last rows % 16), their row dots `dot`,
`dot2`, `dot4` for the other rows and types; the dispatch tables over them.

matmul_tiled takes every token of a call through the tile kernel, whatever their
number (jit.matmul sends the tiled types there only). For the rest the activation is
quantized to int8 once per call (actq), then each row in [r0, r1) is one call of
rows_dot. matmul (the other types, below jit.GEMM_MIN_TOKENS tokens) quantizes
every token once and walks the weight in tiles of ROW_TILE rows: a tile (23-60 KiB)
stays in L1/L2 while all tokens use it, so every weight block is read from memory
once per call, and the int8 tokens (n * cols bytes) are streamed from cache. Tokens
go through the tile 4 at a time (rows_dot4: a record's own dot4 unpacks each weight
block once for the 4), then 2 (rows_dot2), then the
last one alone; every token's output is bit-identical to matvec's. 64 rows rather
than 16: each kernel call costs ~0.1 us of reference counting, which at 16 rows made
8 tokens 0.6-0.85x the speed of 8 matvecs.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.drivers.actq import quantize_rows_for, quantized_x_for
from numallm.kernels.drivers.by_type import by_type
from numallm.kernels.traits import TILED, TRAITS, row_geometry, tiled_part
from numba import njit

ROW_TILE = 64


# out[r] = row r . x for r in [r0, r1), by the GGML type code (quantized types): one
# kernel per type, see drivers/by_type.py.
rows_dot = by_type("rows_dot", {t.code: t.dot for t in TRAITS if t.dot})


@njit(inline="always", cache=True)
def _rows_dot_span(q, w, rb, nb, xq, xd, xs, xs16, out, t0, t1, r0, r1):  # type: ignore[no-untyped-def]
    m = xd.size // out.shape[0]  # blocks of 32 per token (nb counts super-blocks here)
    for t in range(t0, t1):
        rows_dot(q, w, rb, nb, xq[32 * m * t:32 * m * (t + 1)], xd[m * t:m * (t + 1)], xs[m * t:m * (t + 1)],
                 xs16[2 * m * t:2 * m * (t + 1)], out[t], r0, r1)


def _rows_dot_each2(q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1):  # type: ignore[no-untyped-def]
    _rows_dot_span(q, w, rb, nb, xq, xd, xs, xs16, out, t0, t0 + 2, r0, r1)


def _rows_dot_each4(q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1):  # type: ignore[no-untyped-def]
    _rows_dot_span(q, w, rb, nb, xq, xd, xs, xs16, out, t0, t0 + 4, r0, r1)


# out[t, r] = row r . token t for t in [t0, t0 + 2), r in [r0, r1), from the 2-D
# xq, xd, xs, xs16 of actq.quantize_rows flattened (for the grouped types token t's
# nb blocks start at block nb * t) and out [tokens, rows]; bit-identical to rows_dot
# per token. For the quantized types without tiles (the tiled ones take every batch
# through their tiles).
_UNTILED = [t for t in TRAITS if t.dot and t.layout != TILED]
rows_dot2 = by_type("rows_dot2", {t.code: t.dot2 or _rows_dot_each2 for t in _UNTILED})
# The same for t in [t0, t0 + 4).
rows_dot4 = by_type("rows_dot4", {t.code: t.dot4 or _rows_dot_each4 for t in _UNTILED})


def _no_tiles(q, w, rb, nb, full, xq, xd, xs, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    raise ValueError("tile_rows: this type has no tiled layout")


# The record's tile pass; the other quantized types, which never reach it (tiled_part
# is 0 for them), raise.
tile_rows = by_type("tile_rows", {t.code: t.tiles or _no_tiles for t in TRAITS if t.dot})


@njit(nogil=True, cache=True)
def matvec(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    xq, xd, xs, xs16 = quantized_x_for(qcode, x)
    full = tiled_part(qcode, rows)
    if full > r0:
        tile_rows(qcode, w, rb, nb, full, xq, xd, xs, xs16, out[np.newaxis], r0, r1)
    rows_dot(qcode, w, rb, nb, xq, xd, xs, xs16, out, max(r0, full), r1)


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    """The types without a tiled layout."""
    nb, rb = row_geometry(qcode, cols)
    n = X.shape[0]
    xq, xd, xs, xs16 = quantize_rows_for(qcode, X)
    # Flat views, made once: rows_dot4 finds a token's blocks by offset.
    fq, fd, fs, fs16 = xq.reshape(-1), xd.reshape(-1), xs.reshape(-1), xs16.reshape(-1)
    paired = n - n % 4 + (n % 4) // 2 * 2  # tokens the 4- and 2-token kernels take
    for rt in range(r0, r1, ROW_TILE):
        re = min(rt + ROW_TILE, r1)
        for t in range(0, n - 3, 4):
            rows_dot4(qcode, w, rb, nb, fq, fd, fs, fs16, out, t, rt, re)
        if paired % 4:
            rows_dot2(qcode, w, rb, nb, fq, fd, fs, fs16, out, paired - 2, rt, re)
        if paired < n:
            rows_dot(qcode, w, rb, nb, xq[n - 1], xd[n - 1], xs[n - 1], xs16[n - 1], out[n - 1], rt, re)


@njit(nogil=True, cache=True)
def matmul_tiled(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    """The tiled types, any number of tokens: the tile kernel, then each token alone
    through the row kernel for a matrix's last rows % 16."""
    nb, rb = row_geometry(qcode, cols)
    xq, xd, xs, xs16 = quantize_rows_for(qcode, X)
    full = tiled_part(qcode, rows)
    if full > r0:
        tile_rows(qcode, w, rb, nb, full, xq.reshape(-1), xd.reshape(-1), xs.reshape(-1), xs16.reshape(-1), out,
                  r0, r1)
    if r1 > full:  # rows that no tile holds (a view per token costs a reference count)
        for t in range(X.shape[0]):
            rows_dot(qcode, w, rb, nb, xq[t], xd[t], xs[t], xs16[t], out[t], max(r0, full), r1)
