"""Portable Numba decoders: packed rows -> float32, one row at a time.

Each `decode_<type>(w, o, nb, y)` turns the `nb` consecutive blocks at byte offset `o`
of the uint8 buffer `w` into y[0 : nb * block_size]. The bit layouts follow
gguf.quants (ggml's reference dequantizers), except Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0,
which are read in the grouped layout of kernels/repack.py; the tests compare against gguf.
`decode_row(qcode, ...)` dispatches on the integer GGML type code.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.llvm_scalar import at, load_bf16, load_f16, load_u32
from numba import njit

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 10, 11, 12, 13, 14, 30


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


@njit(inline="always", cache=True)
def grouped_nibble(w, qo, g, j, e):  # type: ignore[no-untyped-def]
    """Quant e of block j of a Q4 group of g blocks whose quants start at byte qo
    (kernels/repack.py: pairs of blocks share 32 bytes; an odd last block has 16)."""
    if j < g - (g & 1):
        return (at(w, qo + 32 * (j >> 1) + e) >> (4 * (j & 1))) & 15
    return (at(w, qo + 32 * (j >> 1) + (e & 15)) >> (4 * (e >> 4))) & 15


@njit(nogil=True, cache=True)
def decode_q45(w, o, nb, y, has_min, five):  # type: ignore[no-untyped-def]
    """Q4_0, Q4_1 (has_min), Q5_0 (five), Q5_1 (both) in the grouped layout of
    kernels/repack.py: [d x g] [m x g if has_min] [qh x g if five] [quants]."""
    ts = 18 + 2 * has_min + 4 * five
    for g0 in range(0, nb, 8):
        g = min(8, nb - g0)
        base = o + ts * g0
        qo = base + (ts - 16) * g
        for j in range(g):
            d = load_f16(w, base + 2 * j)
            m = load_f16(w, base + 2 * g + 2 * j) if has_min else -d * np.float32(16 if five else 8)
            qh = load_u32(w, base + (4 if has_min else 2) * g + 4 * j) if five else np.uint32(0)
            for e in range(32):
                q = np.int32(grouped_nibble(w, qo, g, j, e)) | np.int32(((qh >> np.uint32(e)) & np.uint32(1)) << np.uint32(4))
                y[32 * (g0 + j) + e] = d * np.float32(q) + m


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
def decode_q2_k(w, o, nb, y):  # type: ignore[no-untyped-def]
    # 84 bytes: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
    for b in range(nb):
        p = o + 84 * b
        d = load_f16(w, p + 80)
        dmin = load_f16(w, p + 82)
        for e in range(256):
            half, r = e >> 7, e & 127
            q = (w[p + 16 + 32 * half + (r & 31)] >> (2 * (r >> 5))) & 3
            sc = w[p + (e >> 4)]
            y[256 * b + e] = d * np.float32(sc & 15) * np.float32(q) - dmin * np.float32(sc >> 4)


@njit(inline="always", cache=True)
def q3_k_scale(w, s, i):  # type: ignore[no-untyped-def]
    lo = (at(w, s + (i & 7)) >> (4 * (i >> 3))) & 15
    hi = (at(w, s + 8 + (i & 3)) >> (2 * (i >> 2))) & 3
    return np.int32(lo | (hi << 4)) - 32


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


@njit(inline="always", cache=True)
def k_scale_min(w, s, i):  # type: ignore[no-untyped-def]
    """6-bit (scale, min) number i of the 12-byte Q4_K/Q5_K scales at byte s."""
    if i < 4:
        return at(w, s + i) & 63, at(w, s + 4 + i) & 63
    sc = (at(w, s + 4 + i) & 15) | ((at(w, s + i - 4) >> 2) & 0x30)
    mn = (at(w, s + 4 + i) >> 4) | ((at(w, s + i) >> 2) & 0x30)
    return sc, mn


@njit(nogil=True, cache=True)
def decode_q45_k(w, o, nb, y, five):  # type: ignore[no-untyped-def]
    # Q4_K, 144 bytes: d, dmin, scales[12], qs[128] (4 chunks of 32 bytes, low then high
    # nibbles). Q5_K (five), 176 bytes: the same with qh[32] (bit s = sub-block s) before qs.
    ts = 176 if five else 144
    qs = 48 if five else 16
    for b in range(nb):
        p = o + ts * b
        d = load_f16(w, p)
        dmin = load_f16(w, p + 2)
        for s in range(8):
            sc, mn = k_scale_min(w, p + 4, s)
            ds = d * np.float32(sc)
            ms = dmin * np.float32(mn)
            shift = 4 * (s & 1)
            for j in range(32):
                q = (w[p + qs + 32 * (s >> 1) + j] >> shift) & 15
                if five:
                    q |= ((w[p + 16 + j] >> s) & 1) << 4
                y[256 * b + 32 * s + j] = ds * np.float32(q) - ms


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
def decode_row(qcode, w, o, nb, y):  # type: ignore[no-untyped-def]
    """Decode `nb` blocks of type `qcode` at byte `o` of `w` into y (float32)."""
    if qcode == F32:
        decode_f32(w, o, nb, y)
    elif qcode == F16:
        decode_f16(w, o, nb, y)
    elif qcode == BF16:
        decode_bf16(w, o, nb, y)
    elif qcode == Q4_0:
        decode_q45(w, o, nb, y, False, False)
    elif qcode == Q4_1:
        decode_q45(w, o, nb, y, True, False)
    elif qcode == Q5_0:
        decode_q45(w, o, nb, y, False, True)
    elif qcode == Q5_1:
        decode_q45(w, o, nb, y, True, True)
    elif qcode == Q8_0:
        decode_q8_0(w, o, nb, y)
    elif qcode == Q2_K:
        decode_q2_k(w, o, nb, y)
    elif qcode == Q3_K:
        decode_q3_k(w, o, nb, y)
    elif qcode == Q4_K:
        decode_q45_k(w, o, nb, y, False)
    elif qcode == Q5_K:
        decode_q45_k(w, o, nb, y, True)
    elif qcode == Q6_K:
        decode_q6_k(w, o, nb, y)


@njit(inline="always", cache=True)
def geometry(qcode):  # type: ignore[no-untyped-def]
    """(block size, bytes per block) of a GGML type code."""
    if qcode == F32:
        return 1, 4
    if qcode == F16 or qcode == BF16:
        return 1, 2
    if qcode == Q4_0:
        return 32, 18
    if qcode == Q4_1:
        return 32, 20
    if qcode == Q5_0:
        return 32, 22
    if qcode == Q5_1:
        return 32, 24
    if qcode == Q8_0:
        return 32, 34
    if qcode == Q2_K:
        return 256, 84
    if qcode == Q3_K:
        return 256, 110
    if qcode == Q4_K:
        return 256, 144
    if qcode == Q5_K:
        return 256, 176
    if qcode == Q6_K:
        return 256, 210
    return 0, 0


@njit(nogil=True, cache=True)
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    rb = nb * ts
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < 0 or r >= rows:
            raise IndexError("get_rows: row id out of range")
        decode_row(qcode, w, r * rb, nb, out[i])
