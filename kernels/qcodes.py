"""The integer GGML type codes the Numba kernels dispatch on, and each type's block geometry."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 10, 11, 12, 13, 14, 30
CODES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
QUANT_CODES = CODES[3:]

# (block size, bytes per block) by code; (0, 0) for codes the kernels do not handle.
# A global array is a constant of the compiled code: one load instead of a branch chain.
_GEOMETRY = np.zeros((max(CODES) + 1, 2), np.int64)
for _code in CODES:
    _GEOMETRY[_code] = GGML_QUANT_SIZES[GGMLQuantizationType(_code)]


@njit(inline="always", cache=True)
def geometry(qcode):  # type: ignore[no-untyped-def]
    """(block size, bytes per block) of a GGML type code; (0, 0) if unsupported."""
    if qcode < 0 or qcode >= _GEOMETRY.shape[0]:
        return 0, 0
    return _GEOMETRY[qcode, 0], _GEOMETRY[qcode, 1]


@njit(inline="always", cache=True)
def row_geometry(qcode, cols):  # type: ignore[no-untyped-def]
    """(blocks per row, bytes per row) of a row of `cols` elements."""
    nb = cols // geometry(qcode)[0]
    return nb, nb * geometry(qcode)[1]
