"""The tiled layout of Q4_0, Q4_1, Q8_0, IQ4_NL and MXFP4 and its kernel: any number of
tokens, the same bits for each token whatever the batch. The packer and the tile pass
serve the tiled K-quants, IQ4_XS and TQ2_0 too (kernels/families/kquants/tiles.py,
kernels/families/iquants/tiles.py, kernels/families/iquants/ternary.py).

Layout. A matrix's rows go by tiles of TILE = 16 (its last rows % 16 rows keep the
grouped layout of kernels/families/q4_q8/grouped.py and its row kernels; IQ4_NL's and
MXFP4's stay as in the file, for the row dots of iquants/rows.py). A tile holds, for
each block b in turn, the block of its 16 rows as

    [d x 16 float16 | MXFP4: e x 16 bytes] [m x 16 float16: Q4_1]
    [vectors of 64 bytes: 4 (Q4_0, Q4_1, IQ4_NL, MXFP4) or 8 (Q8_0)]

where byte 4i + j of vector v is byte 4v + j of row i's quants in the file: for the
4-bit types, low nibbles elements 4v..4v+3 and high nibbles 4v+16..4v+19 (IQ4_NL and
MXFP4 look them up in their table, iquants/simd.idot16_lut). The tile keeps the 16
rows' bytes (16 blocks of ts bytes per block), so rows keep their size and place
by tiles: a shard or a read that starts on a tile and holds whole tiles (or ends
the matrix) is packed and multiplied on its own.

Kernel. One 64-byte load gives 4 quants of all 16 rows; one vpdpbusd adds their dot
with one token's 4 activations, broadcast, into 16 int32 lanes (simd/i32x16), and the
rows' 16 scales are applied with three vector ops per block per token (convert, times
d, times the token's scale). The quants are dotted as unsigned q + bias (Q4_0: the
nibble is q + 8; IQ4_NL and MXFP4 with VNNI: + 128), the bias taken back off in
integers: a block's accumulators start at -bias times the token's sum of the block's
int8 activations (bias_sums, once per call) rather than at 0 with a float multiply-add
per block and token after (7-10% of the pass's time: benchmarks/README.md, round
ten). Q4_1's min and Q8_0's + 128 still go through the float sums. A row kernel
(kernels/families/q4_q8/rows.py) spends about five times as many instructions per row
and token, converting and scaling every block's partial sums per row. Tokens go
through a tile 8, 4, 2 and 1 at a time (each weight vector loaded and unpacked once
for all of them) while the tile stays in L1; every token keeps its own accumulators
and runs the same steps in the same order, so its result does not depend on how
many tokens share the pass: a sequence decoded in a batch gets the bits it gets
alone, and prefill chunks of any size agree with decode.
"""

from __future__ import annotations

from functools import cache
from typing import Callable

import numpy as np
from numallm.kernels.families.iquants.simd import LUT_BIAS, LUT_IQ4NL, LUT_MXFP4, idot16_lut, vload_e8m0x16
from numallm.kernels.families.iquants.tables import E8M0_HALF, KVALUES_IQ4NL, KVALUES_MXFP4
from numallm.kernels.families.q4_q8.grouped import pack_grouped_rows
from numallm.kernels.simd.cpu import has_avx512
from numallm.kernels.simd.i32x16 import Q8_BIAS, iadd16, idot16_q4, idot16_q8, ifill16, isum, izero16, vfmai16
from numallm.kernels.simd.scalar import at, load_f16, move2, move4, move32
from numallm.kernels.simd.vec import vfma16, vload_f16x16, vscale16, vstore16_at, vzero16
from numba import njit

TILE = 16
# Tokens per pass: 8 int32 and 8 float32 accumulators and 8 weight vectors fill 24 of
# the 32 zmm registers; an AVX2 ymm holds half an accumulator.
MAX_TOKENS = 8 if has_avx512() else 2
Q4_0_KIND, Q4_1_KIND, Q8_0_KIND = 0, 1, 2
Q4_K_KIND, Q5_K_KIND, Q6_K_KIND = 3, 4, 5  # their kernels and decoder: kernels/families/kquants/tiles.py
IQ4_NL_KIND, MXFP4_KIND = 6, 7  # Q4_0's tiles with a table lookup (MXFP4: an E8M0 byte for d)
IQ4_XS_KIND = 8  # its kernel and decoder: kernels/families/iquants/tiles.py
TQ2_0_KIND = 9  # its kernel and decoder: kernels/families/iquants/ternary.py
_BLOCK_BYTES = (18, 20, 34, 144, 176, 210, 18, 17, 136, 66)  # by kind
_LUT_KINDS = {IQ4_NL_KIND: LUT_IQ4NL, MXFP4_KIND: LUT_MXFP4}


@njit(nogil=True, cache=True)
def pack_tiles_and_groups(src, dst, tiles, grouped, nb, kind, tw, fields, nibbles):  # type: ignore[no-untyped-def]
    """`tiles` tiles of a tiled kind, then `grouped` rows in the grouped layout. One
    function for every type: a process loads one packer from Numba's cache (2-3 ms
    each); each tiled kind's branch has its block geometry (_BLOCK_BYTES) as
    constants, so LLVM unrolls the moves of a block."""
    if tiles:
        if kind == Q4_0_KIND:
            _pack_tiles_of(src, dst, tiles, nb, 18, 1, 2, 0)
        elif kind == Q4_1_KIND:
            _pack_tiles_of(src, dst, tiles, nb, 20, 2, 2, 0)
        elif kind == Q8_0_KIND:
            _pack_tiles_of(src, dst, tiles, nb, 34, 1, 2, 0)
        elif kind == Q4_K_KIND:  # d and dmin, then 3 words of scales and 32 of quants
            _pack_tiles_of(src, dst, tiles, nb, 144, 2, 2, 0)
        elif kind == Q5_K_KIND:  # d and dmin, then 3 words of scales, 8 of high bits and 32 of quants
            _pack_tiles_of(src, dst, tiles, nb, 176, 2, 2, 0)
        elif kind == Q6_K_KIND:  # d (the block's last 2 bytes), then its 52 words in the kernel's order (q6k_vector)
            _pack_tiles_of(src, dst, tiles, nb, 210, 1, 2, 208)
        elif kind == TQ2_0_KIND:  # d (the block's last 2 bytes), then its 16 words
            _pack_tiles_of(src, dst, tiles, nb, 66, 1, 2, 64)
        elif kind == IQ4_NL_KIND:
            _pack_tiles_of(src, dst, tiles, nb, 18, 1, 2, 0)
        elif kind == MXFP4_KIND:  # a one-byte exponent, then 4 words of quants
            _pack_tiles_of(src, dst, tiles, nb, 17, 1, 1, 0)
        elif kind == IQ4_XS_KIND:  # d and scales_h, then a word of scales_l and 32 of quants
            _pack_tiles_of(src, dst, tiles, nb, 136, 2, 2, 0)
    if grouped:
        o = tiles * TILE * nb * 2 * tw
        pack_grouped_rows(src[o:].view(np.uint16), dst[o:].view(np.uint16), grouped, nb, tw, fields, nibbles)


@njit(inline="always", cache=True)
def _pack_tiles_of(src, dst, tiles, nb, ts, fields, fw, at_byte):  # type: ignore[no-untyped-def]
    """_pack_tiles for blocks of ts bytes with `fields` scales of fw bytes (2: float16;
    1: MXFP4's exponent) at byte at_byte: the block's start, or its end (TQ2_0, and
    Q6_K, whose words go in q6k_vector's order); the rest of the block is 4-byte words."""
    words = (ts - fw * fields) // 4
    first = fw * fields if at_byte == 0 else 0  # where the words start
    rb = nb * ts
    n = TILE * rb  # a tile fills the bytes it came from; 16 rb is a multiple of 16
    scratch = np.empty(n, np.uint8)
    for g in range(tiles):
        base = g * TILE * rb
        for k in range(0, n - n % 32, 32):
            move32(scratch, k, src, base + k)
        for k in range(n - n % 32, n):
            scratch[k] = src[base + k]
        for b in range(nb):
            o = base + TILE * ts * b
            for i in range(TILE):
                s = i * rb + ts * b
                for f in range(fields):
                    if fw == 2:
                        move2(dst, o + 32 * f + 2 * i, scratch, s + at_byte + 2 * f)
                    else:
                        dst[o + TILE * f + i] = scratch[s + at_byte + f]
                for v in range(words):
                    to = q6k_vector(v) if ts == _BLOCK_BYTES[Q6_K_KIND] else v
                    move4(dst, o + TILE * fw * fields + 64 * to + 4 * i, scratch, s + first + 4 * v)


@njit(inline="always", cache=True)
def q6k_vector(u):  # type: ignore[no-untyped-def]
    """Where word u of a Q6_K block (ql words 0-31, qh 32-47, scales 48-51) goes in its
    tile's super-block: the vector after d, in the order the kernel
    (kernels/families/kquants/tiles.py) first reads them, so the lines of a tile are
    touched in address order (read out of order, two streams per 3360 bytes, they
    streamed from memory at a third of the rate: benchmarks/README.md, round eight).
    Half h (elements 128h..) is 26 vectors: scale vectors 2h and 2h + 1, then for
    qt = 0, 1 (l in [16 qt, 16 qt + 16)) the ql vectors of s0 = 0 each followed by the
    qh vector they share with s0 = 1, then the ql vectors of s0 = 1."""
    if u < 32:
        h, s0, qt, v = u >> 4, (u >> 3) & 1, (u >> 2) & 1, u & 3
        return 26 * h + 2 + 12 * qt + (8 + v if s0 else 2 * v)
    if u < 48:
        h, qt, v = (u - 32) >> 3, ((u - 32) >> 2) & 1, u & 3
        return 26 * h + 3 + 12 * qt + 2 * v
    return 26 * ((u - 48) >> 1) + (u & 1)


@njit(inline="always", cache=True)
def idot_iq4nl(acc, w, p, xq, xo):  # type: ignore[no-untyped-def]
    return idot16_lut(acc, w, p, xq, xo, LUT_IQ4NL)


@njit(inline="always", cache=True)
def _idot_mxfp4(acc, w, p, xq, xo):  # type: ignore[no-untyped-def]
    return idot16_lut(acc, w, p, xq, xo, LUT_MXFP4)


_LUT_DOTS = {IQ4_NL_KIND: idot_iq4nl, MXFP4_KIND: _idot_mxfp4}


@cache
def tile_kernel(kind: int, ntok: int) -> Callable[..., None]:
    """The kernel of one tile for `ntok` tokens (1 <= ntok <= MAX_TOKENS) of a type kind:
    kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc) sets dst[dr + j, dc + i] to row i of the
    tile at byte p of w dotted with token t0 + j, from the flat xq, xd, xs of
    actq.quantize_rows (token t's blocks start at block t * nb). dst's rows must be
    contiguous."""
    ts = _BLOCK_BYTES[kind]
    # byte of a block's quants in its tile chunk
    quants = 64 if kind == Q4_1_KIND else (16 if kind == MXFP4_KIND else 32)
    # Q4_1's min and Q8_0's bias go through the activation's float block sums xs, the
    # other kinds' bias through bias_sums (xs for them)
    offset = kind == Q4_1_KIND or (kind == Q8_0_KIND and Q8_BIAS != 0)
    starts = start_tokens(start_block(kind))
    idot, vectors = (idot16_q8, 8) if kind == Q8_0_KIND else (_LUT_DOTS.get(kind, idot16_q4), 4)  # 64-byte vectors a block
    dots = dot_tokens(idot)
    e8m0 = kind == MXFP4_KIND

    @njit(nogil=True, cache=True)
    def kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc):  # type: ignore[no-untyped-def]
        f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = vzero16()
        x0 = t0 * nb
        for b in range(nb):
            c = p + TILE * ts * b
            dv = vload_e8m0x16(w, c) if e8m0 else vload_f16x16(w, c)
            mv = vload_f16x16(w, c + 32) if kind == Q4_1_KIND else vscale16(dv, np.float32(-Q8_BIAS))
            k = x0 + b
            i0, i1, i2, i3, i4, i5, i6, i7 = starts(xs, k, nb, ntok)
            q = c + quants
            for v in range(vectors):
                i0, i1, i2, i3, i4, i5, i6, i7 = dots(i0, i1, i2, i3, i4, i5, i6, i7, ntok, v, w, q + 64 * v, xq,
                                                      32 * (x0 + b) + 4 * v, 32 * nb)
            f0, f1, f2, f3, f4, f5, f6, f7 = scale_tokens(f0, f1, f2, f3, f4, f5, f6, f7, i0, i1, i2, i3, i4, i5, i6, i7,
                                                          ntok, dv, mv, xd, xs, k, nb, offset)
        store_tokens(dst, dr, dc, ntok, f0, f1, f2, f3, f4, f5, f6, f7)

    return kernel


@njit(inline="always", cache=True)
def store_tokens(dst, dr, dc, ntok, f0, f1, f2, f3, f4, f5, f6, f7):  # type: ignore[no-untyped-def]
    """A tile kernel's first ntok accumulators into rows dr.. of dst at column dc."""
    vstore16_at(dst, dr, dc, f0)
    if ntok > 1:
        vstore16_at(dst, dr + 1, dc, f1)
    if ntok > 2:
        vstore16_at(dst, dr + 2, dc, f2)
        vstore16_at(dst, dr + 3, dc, f3)
    if ntok > 4:
        vstore16_at(dst, dr + 4, dc, f4)
        vstore16_at(dst, dr + 5, dc, f5)
        vstore16_at(dst, dr + 6, dc, f6)
        vstore16_at(dst, dr + 7, dc, f7)


def block_bias(kind: int) -> int:
    """The bias the tile kernel of a type kind adds to its quants to dot them as
    unsigned bytes and takes off in integers (Q4_0: 8; TQ2_0: 1; IQ4_NL, MXFP4, IQ4_XS:
    LUT_BIAS); 0 for none: Q4_1, whose min takes the float sums, the K-quants, and
    Q8_0, whose Q8_BIAS takes them too (in integers its one-token pass ran 10% slower
    from L3, benchmarks/README.md, round ten)."""
    if kind == Q4_0_KIND:
        return 8
    if kind == TQ2_0_KIND:
        return 1
    return LUT_BIAS if kind in _LUT_KINDS or kind == IQ4_XS_KIND else 0


@njit(nogil=True, cache=True)
def bias_sums(xq, bias, per):  # type: ignore[no-untyped-def]
    """-bias times the sum of each block of `per` (32, or 16: Q6_K's sub-blocks) of the
    int8 activations xq, as int32: where a bias-dotting kernel's accumulator of that
    block starts."""
    sums = np.empty(xq.size // per, np.int32)
    for k in range(sums.size):
        sums[k] = np.int32(-bias) * (isum(xq, 16 * k, 16) if per == 16 else isum(xq, 32 * k, 32))
    return sums


@njit(inline="always", cache=True)
def _start_at(xs, k):  # type: ignore[no-untyped-def]
    return ifill16(at(xs, k))


@njit(inline="always", cache=True)
def _start_zero(xs, k):  # type: ignore[no-untyped-def]
    return izero16()


def start_block(kind: int) -> Callable[..., object]:
    """start(xs, k): the int32 accumulators of block k at their start: its bias_sums
    (xs) where the kind dots with a bias, else zeros."""
    return _start_at if block_bias(kind) else _start_zero


@njit(inline="always", cache=True)
def scale_block(f, i, dv, mv, xd, xs, k, offset):  # type: ignore[no-untyped-def]
    """f + float(i) * d * xd[k] + m * xs[k]: one block's integer dots scaled, Q4_1's min
    or Q8_0's bias applied through the activation's block sum where `offset` (the
    other biases are taken off in integers: bias_sums)."""
    f = vfmai16(f, i, dv, at(xd, k))
    if offset:
        f = vfma16(f, mv, at(xs, k))
    return f


@cache
def start_tokens(start: Callable[..., object]) -> Callable[..., object]:
    """starts(xs, k, kstep, ntok): the int32 accumulators of up to MAX_TOKENS tokens'
    block (token j's block k + j kstep) at their start, start(xs, block); zeros past ntok."""

    @njit(inline="always", cache=True)
    def starts(xs, k, kstep, ntok):  # type: ignore[no-untyped-def]
        i0 = start(xs, k)
        i1 = i2 = i3 = i4 = i5 = i6 = i7 = izero16()
        if ntok > 1:
            i1 = start(xs, k + kstep)
        if ntok > 2:
            i2 = start(xs, k + 2 * kstep)
            i3 = start(xs, k + 3 * kstep)
        if ntok > 4:
            i4 = start(xs, k + 4 * kstep)
            i5 = start(xs, k + 5 * kstep)
            i6 = start(xs, k + 6 * kstep)
            i7 = start(xs, k + 7 * kstep)
        return i0, i1, i2, i3, i4, i5, i6, i7

    return starts


@cache
def dot_tokens(idot: Callable[..., object]) -> Callable[..., object]:
    """dots(i0..i7, ntok, v, w, qv, xq, xv, step): the tile vector at byte qv of w dotted
    by idot(acc, w, qv, xq, xo) into each of ntok tokens' accumulators (token j's
    activations at xv + j step). One token alone runs two dependency chains, i0 for
    the even vectors v and i1 for the odd ones (scale_tokens joins them)."""

    @njit(inline="always", cache=True)
    def dots(i0, i1, i2, i3, i4, i5, i6, i7, ntok, v, w, qv, xq, xv, step):  # type: ignore[no-untyped-def]
        if ntok == 1 and v % 2:
            i1 = idot(i1, w, qv, xq, xv)
        else:
            i0 = idot(i0, w, qv, xq, xv)
        if ntok > 1:
            i1 = idot(i1, w, qv, xq, xv + step)
        if ntok > 2:
            i2 = idot(i2, w, qv, xq, xv + 2 * step)
            i3 = idot(i3, w, qv, xq, xv + 3 * step)
        if ntok > 4:
            i4 = idot(i4, w, qv, xq, xv + 4 * step)
            i5 = idot(i5, w, qv, xq, xv + 5 * step)
            i6 = idot(i6, w, qv, xq, xv + 6 * step)
            i7 = idot(i7, w, qv, xq, xv + 7 * step)
        return i0, i1, i2, i3, i4, i5, i6, i7

    return dots


@njit(inline="always", cache=True)
def scale_tokens(f0, f1, f2, f3, f4, f5, f6, f7, i0, i1, i2, i3, i4, i5, i6, i7,  # type: ignore[no-untyped-def]
                 ntok, dv, mv, xd, xs, k, kstep, offset):
    """Each of ntok tokens' block of integer dots scaled into its float accumulator
    (scale_block; token j's block k + j kstep), one token's two chains joined first."""
    if ntok == 1:
        i0 = iadd16(i0, i1)
    f0 = scale_block(f0, i0, dv, mv, xd, xs, k, offset)
    if ntok > 1:
        f1 = scale_block(f1, i1, dv, mv, xd, xs, k + kstep, offset)
    if ntok > 2:
        f2 = scale_block(f2, i2, dv, mv, xd, xs, k + 2 * kstep, offset)
        f3 = scale_block(f3, i3, dv, mv, xd, xs, k + 3 * kstep, offset)
    if ntok > 4:
        f4 = scale_block(f4, i4, dv, mv, xd, xs, k + 4 * kstep, offset)
        f5 = scale_block(f5, i5, dv, mv, xd, xs, k + 5 * kstep, offset)
        f6 = scale_block(f6, i6, dv, mv, xd, xs, k + 6 * kstep, offset)
        f7 = scale_block(f7, i7, dv, mv, xd, xs, k + 7 * kstep, offset)
    return f0, f1, f2, f3, f4, f5, f6, f7


@cache
def tile_pass(kind: int) -> Callable[..., None]:
    """pass_(w, rb, nb, full, xq, xd, xs, out, r0, r1): out[t, r] for every token t and
    the rows r of [r0, r1) below `full` (the tiled rows) of a matrix of this type kind
    (rows of rb bytes, nb blocks), from the flat xq, xd, xs of the tokens."""
    return tile_pass_of(tuple(tile_kernel(kind, n) for n in (8, 4, 2, 1)), MAX_TOKENS)


def tile_pass_of(kernels: tuple[Callable[..., None], ...], wide: int) -> Callable[..., None]:
    """tile_pass over the kernels of a tile for 8, 4, 2 and 1 tokens (tile_kernel's
    signature), taking at most `wide` tokens a pass."""
    k8, k4, k2, k1 = kernels

    @njit(nogil=True, cache=True)
    def pass_(w, rb, nb, full, xq, xd, xs, out, r0, r1):  # type: ignore[no-untyped-def]
        n = out.shape[0]
        res = np.empty((8, TILE), np.float32)
        unit = out.strides[1] == 4
        for g0 in range(r0 - r0 % TILE, min(r1, full), TILE):
            lo, hi = max(r0, g0) - g0, min(r1, g0 + TILE) - g0
            p = g0 * rb
            # a whole tile goes straight into out (16 lanes a store); a tile cut by
            # [r0, r1) goes through res, then its rows in range
            whole = unit and lo == 0 and hi == TILE
            t = np.int64(0)  # not a literal 0: Numba would also compile k8 for one
            while n - t >= 8 and wide >= 8:
                _tile(k8, 8, w, p, nb, xq, xd, xs, t, out, res, whole, g0, lo, hi)
                t += 8
            if n - t >= 4 and wide >= 4:
                _tile(k4, 4, w, p, nb, xq, xd, xs, t, out, res, whole, g0, lo, hi)
                t += 4
            while n - t >= 2:
                _tile(k2, 2, w, p, nb, xq, xd, xs, t, out, res, whole, g0, lo, hi)
                t += 2
            if n > t:
                _tile(k1, 1, w, p, nb, xq, xd, xs, t, out, res, whole, g0, lo, hi)
    return pass_


@njit(inline="always", cache=True)
def _tile(kernel, nt, w, p, nb, xq, xd, xs, t, out, res, whole, g0, lo, hi):  # type: ignore[no-untyped-def]
    """Tokens [t, t + nt) through the tile at column g0: straight into out when whole,
    else into res and then its rows [lo, hi) into out. One call, its destination chosen
    before it: each kernel compiles for one signature (a call with constants compiles
    another, for their literal types)."""
    dst, dr, dc = (out, t, g0) if whole else (res, 0, 0)
    kernel(w, p, nb, xq, xd, xs, t, dst, dr, dc)
    if not whole:
        for j in range(nt):
            for i in range(lo, hi):
                out[t + j, g0 + i] = res[j, i]


def tile_rows_impl(kind: int) -> Callable[..., None]:
    """tile_pass of this kind with the type code first (kernels/traits.py's `tiles`)."""
    return with_type_code(tile_pass(kind), bias=block_bias(kind))


def tile_rows_of(kernel_for: Callable[[int], Callable[..., None]], kind: int) -> Callable[..., None]:
    """The tile pass over kernel_for(ntok) (tile_kernel's signature) of a kind with a
    family module of its own (IQ4_XS, TQ2_0), with the type code first; without
    AVX-512 at most 2 tokens a pass."""
    kernels = tuple(kernel_for(min(n, MAX_TOKENS)) for n in (8, 4, 2, 1))
    return with_type_code(tile_pass_of(kernels, MAX_TOKENS), bias=block_bias(kind))


def with_type_code(pass_: Callable[..., None], bias: int = 0, per: int = 32) -> Callable[..., None]:
    """A tile pass taking the type code first and the activation's sums per 32 and per
    16, as the records' `tiles` do (it passes on those per 32, or with a bias the
    activation's bias_sums per `per` instead)."""
    if bias:
        def impl_bias(q, w, rb, nb, full, xq, xd, xs, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
            pass_(w, rb, nb, full, xq, xd, bias_sums(xq, bias, per), out, r0, r1)
        return impl_bias

    def impl(q, w, rb, nb, full, xq, xd, xs, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
        pass_(w, rb, nb, full, xq, xd, xs, out, r0, r1)
    return impl


@njit(nogil=True, cache=True)
def decode_tiled(kind, w, p, i, nb, y):  # type: ignore[no-untyped-def]
    """Row i of the tile at byte p as float32 into y, as ggml's dequantizers compute it."""
    ts = TILE * _BLOCK_BYTES[kind]
    quants = 64 if kind == Q4_1_KIND else (16 if kind == MXFP4_KIND else 32)
    table = KVALUES_MXFP4 if kind == MXFP4_KIND else KVALUES_IQ4NL
    for b in range(nb):
        c = p + ts * b
        d = E8M0_HALF[at(w, c + i)] if kind == MXFP4_KIND else load_f16(w, c + 2 * i)
        m = load_f16(w, c + 32 + 2 * i) if kind == Q4_1_KIND else np.float32(0.0)
        for v in range(8 if kind == Q8_0_KIND else 4):
            for j in range(4):
                byte = at(w, c + quants + 64 * v + 4 * i + j)
                e = 32 * b + 4 * v + j
                if kind == Q8_0_KIND:
                    y[e] = d * np.float32(np.int8(byte))
                elif kind == Q4_1_KIND:
                    y[e] = d * np.float32(byte & 15) + m
                    y[e + 16] = d * np.float32(byte >> 4) + m
                elif kind == IQ4_NL_KIND or kind == MXFP4_KIND:
                    y[e] = d * np.float32(table[byte & 15])
                    y[e + 16] = d * np.float32(table[byte >> 4])
                else:
                    y[e] = d * np.float32(np.int32(byte & 15) - 8)
                    y[e + 16] = d * np.float32(np.int32(byte >> 4) - 8)
