"""Row dot products of quantized weights with an int8-quantized activation (SIMD).

Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 live in kernels/fastdot_grouped.py (their grouped
layout); the K-quants, read in file layout, are here. `rows_dot2` and `rows_dot4` do 2
and 4 tokens at once (fast.matmul, for the types without tiles): one pass over each row
for Q5_0 and Q5_1, a rows_dot call per token for the K-quants.

`rows_<type>(w, rb, nb, xq, xd, xs, xs16, out, r0, r1)` sets out[r] for r in [r0, r1)
to the dot product of row r (the `nb` blocks at byte r * rb of w, the file's block
layout) with x given as actq.quantize_x made it. The row loop lives inside each
kernel because a Numba call per row costs atomic reference counting of every array
argument, which halved the speed on rows of a few KiB. Quants (as unsigned bytes)
are dotted with int8 activations in integers and scaled in float32 by the weight's
and the activation's block scales; offsets (Q4_0's -8, ...) and mins are applied
once per block through the activation's block sums instead of per element.

The K-quant kernels run one vec_kquant.kquant_dot per super-block (four 64-element
vpdpbusd dots, each lane scaled by its sub-block's factor); per super-block they only
decode the scales (and mins) with vector ops into one factor vector, and apply the
mins or offsets with one FMA on the activation's block sums. Against the earlier
per-sub-block kernels this made Q2_K-Q5_K 1.4-1.5x and Q6_K 1.7x faster from cache
(benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.by_type import by_type
from numallm.kernels.fastdot_grouped import (
    rows_q8_0,
    rows_q45,
    rows_q45_x2,
    rows_q45_x4,
)
from numallm.kernels.llvm_scalar import load_f16
from numallm.kernels.qcodes import (
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
)
from numallm.kernels.vec import (
    vadd16,
    vfmav16,
    vhsum,
    vhsum16,
    vload8,
    vload16,
    vzero16,
)
from numallm.kernels.vec_kquant import (
    bytes16,
    k_factors16,
    kquant_dot,
    q3k_scales16,
    vcat8,
    vhigh8,
    vload8_pairs,
    vmul16,
    vscale16,
)
from numba import njit


@njit(nogil=True, cache=True)
def rows_q23_k(w, rb, nb, three, xq, xd, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q2_K, and Q3_K (three). Both have 16 sub-blocks of 16 per super-block. Q2_K:
    scale bytes 0-15, low nibble the scale, high nibble the min (applied through
    xs16), d and dmin at 80, 82. Q3_K: q + 4 (in 0..7) is what vec_kquant dots, its
    6-bit signed scales at 96, d at 108, the -4 through xs16."""
    ts = 110 if three else 84
    for r in range(r0, r1):
        o = r * rb
        acc = vzero16()
        cv = vzero16()
        for b in range(nb):
            p = o + ts * b
            xs = vload16(xs16, 16 * b)
            if three:
                dsc = vscale16(q3k_scales16(w, p + 96), load_f16(w, p + 108))
                cv = vfmav16(cv, dsc, xs)
                acc = vadd16(acc, kquant_dot(w, p, vmul16(dsc, vload8_pairs(xd, 8 * b)), xq, 256 * b, Q3_K))
            else:
                dsc = vscale16(bytes16(w, p, 1), load_f16(w, p + 80))
                cv = vfmav16(cv, vscale16(bytes16(w, p, 2), load_f16(w, p + 82)), xs)
                acc = vadd16(acc, kquant_dot(w, p, vmul16(dsc, vload8_pairs(xd, 8 * b)), xq, 256 * b, Q2_K))
        out[r] = vhsum16(acc) - (np.float32(4.0) if three else np.float32(1.0)) * vhsum16(cv)


@njit(nogil=True, cache=True)
def rows_q45_k(w, rb, nb, five, xq, xd, xs, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q4_K, and Q5_K (five: a 5th bit from the qh plane). One multiply makes the 8
    sub-block factors d * sc * xd (lanes 0-7 of f) and the 8 min terms dmin * m * xs
    (lanes 8-15), which are summed per row and subtracted once."""
    ts = 176 if five else 144
    for r in range(r0, r1):
        o = r * rb
        acc = vzero16()
        cv = vzero16()
        for b in range(nb):
            p = o + ts * b
            f = vmul16(k_factors16(w, p), vcat8(vload8(xd, 8 * b), vload8(xs, 8 * b)))
            cv = vadd16(cv, f)
            if five:
                acc = vadd16(acc, kquant_dot(w, p, f, xq, 256 * b, Q5_K))
            else:
                acc = vadd16(acc, kquant_dot(w, p, f, xq, 256 * b, Q4_K))
        out[r] = vhsum16(acc) - vhsum(vhigh8(cv))


@njit(nogil=True, cache=True)
def rows_q6_k(w, rb, nb, xq, xd, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q6_K: q + 32 (in 0..63) is what vec_kquant dots, int8 scales per 16 elements at
    192, d at 208, the -32 through xs16."""
    for r in range(r0, r1):
        o = r * rb
        acc = vzero16()
        cv = vzero16()
        for b in range(nb):
            p = o + 210 * b
            dsc = vscale16(bytes16(w, p + 192, 0), load_f16(w, p + 208))
            cv = vfmav16(cv, dsc, vload16(xs16, 16 * b))
            acc = vadd16(acc, kquant_dot(w, p, vmul16(dsc, vload8_pairs(xd, 8 * b)), xq, 256 * b, Q6_K))
        out[r] = vhsum16(acc) - np.float32(32.0) * vhsum16(cv)


# out[r] = row r . x for r in [r0, r1), by the GGML type code (quantized types): one
# kernel per type, see kernels/by_type.py.
rows_dot = by_type("rows_dot", {
    Q4_0: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q45(w, rb, nb, False, False, xq, xd, xs, out, r0, r1),
    Q4_1: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q45(w, rb, nb, True, False, xq, xd, xs, out, r0, r1),
    Q5_0: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q45(w, rb, nb, False, True, xq, xd, xs, out, r0, r1),
    Q5_1: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q45(w, rb, nb, True, True, xq, xd, xs, out, r0, r1),
    Q8_0: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q8_0(w, rb, nb, xq, xd, out, r0, r1),
    Q2_K: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q23_k(w, rb, nb, False, xq, xd, xs16, out, r0, r1),
    Q3_K: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q23_k(w, rb, nb, True, xq, xd, xs16, out, r0, r1),
    Q4_K: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q45_k(w, rb, nb, False, xq, xd, xs, out, r0, r1),
    Q5_K: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q45_k(w, rb, nb, True, xq, xd, xs, out, r0, r1),
    Q6_K: lambda q, w, rb, nb, xq, xd, xs, xs16, out, r0, r1: rows_q6_k(w, rb, nb, xq, xd, xs16, out, r0, r1),
})


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
# per token.
rows_dot2 = by_type("rows_dot2", {
    Q5_0: lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: rows_q45_x2(w, rb, nb, False, True, xq, xd, xs, out, t0, r0, r1),
    Q5_1: lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: rows_q45_x2(w, rb, nb, True, True, xq, xd, xs, out, t0, r0, r1),
    **{code: _rows_dot_each2 for code in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)},
})

# The same for t in [t0, t0 + 4).
rows_dot4 = by_type("rows_dot4", {
    Q5_0: lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: rows_q45_x4(w, rb, nb, False, True, xq, xd, xs, out, t0, r0, r1),
    Q5_1: lambda q, w, rb, nb, xq, xd, xs, xs16, out, t0, r0, r1: rows_q45_x4(w, rb, nb, True, True, xq, xd, xs, out, t0, r0, r1),
    **{code: _rows_dot_each4 for code in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)},
})
