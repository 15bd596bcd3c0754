"""Quantized rows -> unsigned byte quants with a float scale and offset per sub-block.

The int8 tile GEMM (drivers/gemm_int8.py) reads the quantized types without a tiled
layout in this form, and drivers/decode.py the affine ones: element k of a row is
d[k // S] * q[k] + m[k // S] with q an unsigned byte and S the type's sub_size
(kernels/traits.py). The integer part q is exact; d and m fold the type's scales,
mins and offsets (Q4_0's -8, Q6_K's -32, ...) and multiply the activation's int8 dot
product and block sum in float32. Each family's unpack_* (its record's `unpack`)
reads quants 4 at a time, as the 4 bytes of a uint32 from one unaligned 4-byte load,
shift and mask (simd/scalar.field4): a byte loop was 3-4x slower.

Every unpacker writes word c (quants 4c..4c+3, byte j = quant 4c+j) of the row to
q32[st * c + lane] and the sub-block s's d and m to d[st * s + lane], m[st * s + lane]:
st = 1 is a plain row (unpack_row), st = TILE_ROWS a row of the interleaved tile of
drivers/gemm_int8.py, written in place.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.drivers.by_type import by_type
from numallm.kernels.traits import TRAITS
from numba import njit

# Unpack the `nb` blocks of type `qcode` at byte `o` of `w` into q32, d, m with stride
# st at lane (see above; drivers/by_type.py for the dispatch).
unpack_strided = by_type("unpack_strided", {t.code: t.unpack for t in TRAITS if t.unpack})


@njit(nogil=True, cache=True)
def unpack_row(qcode, w, o, nb, q, d, m):  # type: ignore[no-untyped-def]
    """Unpack the `nb` blocks of type `qcode` at byte `o` of `w` into the byte quants q
    (one per element) and the sub-blocks' d and m."""
    unpack_strided(qcode, w, o, nb, q.view(np.uint32), d, m, 1, 0)
