"""The grouped layout of Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 rows, and packing into it
(the fields of each type: kernels/traits.py).

File layout: blocks of 32 one after another, each its float16 scale(s) then its
quants. The SIMD kernels spend most of their instructions on those scalars (a load,
a conversion and a multiply per scale per block), so each row is regrouped, in
place of the same bytes, into groups of 8 blocks (the last group of a row holds the
remaining 1-7):

    [d x G float16] [m x G float16: Q4_1, Q5_1] [qh x G uint32: Q5_0, Q5_1] [quants]

so that one vcvtph2ps converts 8 scales and one multiply applies the activation's 8
block scales. Q4/Q5 nibbles are regrouped by pairs of blocks (A, B): 32 bytes
with byte j = A's nibble j | B's nibble j << 4, so a 32-byte load masked or shifted
lines up with 32 int8 activations without shuffles (the odd last block of a group
keeps the file's 16-byte nibble order). Q8_0 quants stay as they are.
A row keeps its size, so packed_nbytes is the file size and shards are any row range.

Packing is compiled and releases the GIL, so the loader's reading threads pack in
parallel, each at several GB/s. A group is its unit: it fills the same bytes before
and after, so each group is copied to a scratch buffer and written back regrouped,
which works in place (src is dst) as well as between two buffers. The code moves
16-bit words (every field and every block is 2-byte aligned) with unsigned indices
(Numba's signed ones add a negative-index fix-up that blocks vectorization: 4x
slower), and regroups nibble pairs as LLVM vectors of 16 bytes.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba import uint64 as U
from numba.extending import intrinsic

GROUP = 8
MAX_FIELDS = 3  # scalar fields before a block's quants (Q5_1: d, m, qh); their widths in
# 16-bit words come padded with zeros to this length, so one compiled function serves every type


@njit(inline="always", cache=True)
def pack_grouped_rows(src, dst, rows_, nb_, tw_, fields, nibbles):  # type: ignore[no-untyped-def]
    """Rows [0, rows_) of src into dst in the grouped layout. src, dst: uint16 views of
    whole rows (the same array, or not overlapping), read and written unchecked; tw_
    words per block; fields: widths in words. Compiled into kernels/families/q4_q8/tiles.py's one
    packing function (a process loads one packer from Numba's cache, 2-3 ms each)."""
    rows, nb, tw, G, two = U(rows_), U(nb_), U(tw_), U(GROUP), U(2)
    scratch = np.empty(GROUP * tw_, np.uint16)
    qa = U(fields[0] + fields[1] + fields[2])  # a block's quants start at word qa
    qn = tw - qa                               # and fill qn words
    for r in range(rows):
        for b0 in range(U(0), nb, G):
            g = min(G, nb - b0)
            base = (r * nb + b0) * tw
            for i in range(g * tw):
                scratch[i] = src[base + i]
            o, a = base, U(0)
            for f in range(MAX_FIELDS):
                w = U(fields[f])  # 1 or 2 words (padding 0s last): a loop over w was 2-3x slower
                if w == U(0):
                    break
                for b in range(g):
                    dst[o + b * w] = scratch[b * tw + a]
                    if w == two:
                        dst[o + b * w + U(1)] = scratch[b * tw + a + U(1)]
                o += g * w
                a += w
            if nibbles:
                for p in range(g // two):
                    pa = two * p * tw + qa
                    _nibble_pair(dst, two * o, scratch, two * pa, two * (pa + tw))
                    o += U(16)
                if g % two:  # the odd last block keeps its file order
                    last = (g - U(1)) * tw + qa
                    for j in range(qn):
                        dst[o + j] = scratch[last + j]
            else:
                for b in range(g):
                    for j in range(qn):
                        dst[o + b * qn + j] = scratch[b * tw + qa + j]


def _byte_ptr(context, builder, arrty, arr, off):  # type: ignore[no-untyped-def]
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [off])


@intrinsic
def _nibble_pair(typingctx, dst, o, src, pa, pb):  # type: ignore[no-untyped-def]
    """dst bytes [o, o+32) = the nibbles of the 16 bytes at src byte pa (block A) and pb
    (block B) paired: byte j = A's nibble j | B's nibble j << 4 (element j of a block is
    the low nibble of byte j for j < 16, the high nibble of byte j - 16 above)."""
    v16 = ir.VectorType(ir.IntType(8), 16)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        d, ov, s, pav, pbv = args

        def load(off):  # type: ignore[no-untyped-def]
            ptr = _byte_ptr(context, builder, sig.args[2], s, off)
            return builder.load(builder.bitcast(ptr, v16.as_pointer()), align=1)

        def store(v, off):  # type: ignore[no-untyped-def]
            ptr = _byte_ptr(context, builder, sig.args[0], d, off)
            builder.store(v, builder.bitcast(ptr, v16.as_pointer()), align=1)

        a, b = load(pav), load(pbv)
        low, four, high = (ir.Constant(v16, [c] * 16) for c in (0x0F, 4, 0xF0))
        store(builder.or_(builder.and_(a, low), builder.shl(b, four)), ov)
        store(builder.or_(builder.lshr(a, four), builder.and_(b, high)),
              builder.add(ov, ir.Constant(ov.type, 16)))
        return context.get_dummy_value()
    return types.none(dst, o, src, pa, pb), codegen
