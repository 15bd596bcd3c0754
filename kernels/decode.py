"""Portable Numba decoders: packed rows -> float32, one row at a time.

Each `decode_<type>(w, o, nb, y)` turns the `nb` consecutive blocks at byte offset `o`
of the uint8 buffer `w` into y[0 : nb * block_size], bit for bit what gguf.quants
(ggml's reference dequantizers) computes; the tests compare. The types whose
reference is d * q + m per sub-block go through kernels/unpack.py (the int8 GEMM's
form of a row); the others (float types, Q8_0, Q3_K, Q6_K, whose references multiply
in another order) have decoders here. Q4_0, Q4_1 and Q8_0 rows in tiles are decoded
by kernels/tiled.py, the others of Q4_0-Q8_0 are in the grouped layout of
kernels/repack.py. `decode_row(qcode, ...)` dispatches on the integer GGML type code.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.by_type import by_type
from numallm.kernels.llvm_scalar import at, load_bf16, load_f16
from numallm.kernels.qcodes import (
    BF16,
    F16,
    F32,
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    geometry,
    row_geometry,
)
from numallm.kernels.tiled import TILE, decode_tiled, tile_kind, tiled_part
from numallm.kernels.unpack import q3_k_scale, sub_size, unpack_row
from numba import njit


@njit(nogil=True, cache=True)
def decode_f32(w, o, nb, y):  # type: ignore[no-untyped-def]
    y[:nb] = w[o:o + 4 * nb].view(np.float32)


@njit(nogil=True, cache=True)
def decode_f16(w, o, nb, y):  # type: ignore[no-untyped-def]
    for i in range(nb):
        y[i] = load_f16(w, o + 2 * i)


@njit(nogil=True, cache=True)
def decode_bf16(w, o, nb, y):  # type: ignore[no-untyped-def]
    for i in range(nb):
        y[i] = load_bf16(w, o + 2 * i)


@njit(nogil=True, cache=True)
def decode_q8_0(w, o, nb, y):  # type: ignore[no-untyped-def]
    # Grouped layout (kernels/repack.py): [d x g] [32 int8 x g].
    for g0 in range(0, nb, 8):
        g = min(8, nb - g0)
        base = o + 34 * g0
        for j in range(g):
            d = load_f16(w, base + 2 * j)
            for e in range(32):
                y[32 * (g0 + j) + e] = d * np.float32(np.int8(at(w, base + 2 * g + 32 * j + e)))


@njit(nogil=True, cache=True)
def decode_q3_k(w, o, nb, y):  # type: ignore[no-untyped-def]
    # 110 bytes: hmask[32], qs[64], scales[12] (16 x 6 bits), d.
    for b in range(nb):
        p = o + 110 * b
        d = load_f16(w, p + 108)
        for e in range(256):
            half, r = e >> 7, e & 127
            ql = np.int32((w[p + 32 + 32 * half + (r & 31)] >> (2 * (r >> 5))) & 3)
            hbit = (w[p + (e & 31)] >> (e >> 5)) & 1
            q = ql - 4 * np.int32(1 - hbit)
            y[256 * b + e] = d * np.float32(q3_k_scale(w, p + 96, e >> 4) * q)


@njit(nogil=True, cache=True)
def decode_q6_k(w, o, nb, y):  # type: ignore[no-untyped-def]
    # 210 bytes: ql[128], qh[64], scales int8[16], d.
    for b in range(nb):
        p = o + 210 * b
        d = load_f16(w, p + 208)
        for e in range(256):
            half, r = e >> 7, e & 127
            ql = (w[p + 64 * half + (r & 63)] >> (4 * (r >> 6))) & 15
            qh = (w[p + 128 + 32 * half + (r & 31)] >> (2 * (r >> 5))) & 3
            q = np.int32(ql | (qh << 4)) - 32
            y[256 * b + e] = d * np.float32(np.int32(np.int8(w[p + 192 + (e >> 4)])) * q)


@njit(nogil=True, cache=True)
def decode_affine(qcode, w, o, nb, y):  # type: ignore[no-untyped-def]
    """The types whose values are d * q + m per sub-block as their reference computes
    them (Q4_0-Q5_1, Q2_K, Q4_K, Q5_K), through kernels/unpack.py."""
    cols = nb * geometry(qcode)[0]
    S = sub_size(qcode)
    q = np.empty(cols, np.uint8)
    d = np.empty(cols // S, np.float32)
    m = np.empty(cols // S, np.float32)
    unpack_row(qcode, w, o, nb, q, d, m)
    for k in range(cols):
        y[k] = d[k // S] * np.float32(q[k]) + m[k // S]


# Decode `nb` blocks of type `qcode` at byte `o` of `w` into y (float32); see
# kernels/by_type.py for the dispatch.
decode_row = by_type("decode_row", {
    F32: lambda qc, w, o, nb, y: decode_f32(w, o, nb, y),
    F16: lambda qc, w, o, nb, y: decode_f16(w, o, nb, y),
    BF16: lambda qc, w, o, nb, y: decode_bf16(w, o, nb, y),
    Q8_0: lambda qc, w, o, nb, y: decode_q8_0(w, o, nb, y),
    Q3_K: lambda qc, w, o, nb, y: decode_q3_k(w, o, nb, y),
    Q6_K: lambda qc, w, o, nb, y: decode_q6_k(w, o, nb, y),
    **dict.fromkeys((Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q4_K, Q5_K), lambda qc, w, o, nb, y: decode_affine(qc, w, o, nb, y)),
})


@njit(nogil=True, cache=True)
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    full = tiled_part(qcode, rows)
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < 0 or r >= rows:
            raise IndexError("get_rows: row id out of range")
        if r < full:
            decode_tiled(tile_kind(qcode), w, (r - r % TILE) * rb, r % TILE, nb, out[i])
        else:
            decode_row(qcode, w, r * rb, nb, out[i])
