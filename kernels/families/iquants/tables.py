"""The lookup tables of the i-quants, MXFP4 and IQ4_NL, taken from gguf-py (gguf.quants).

gguf.quants carries ggml's tables (ggml-common.h: iq2xxs_grid, iq2xs_grid, iq2s_grid,
iq3xxs_grid, iq3s_grid, iq1s_grid, ksigns_iq2xs, kvalues_iq4nl, kvalues_mxfp4) in a
packed form, from which its numpy dequantizers build them; we build them the same way
and keep them as int8 arrays, one row of 8 (or 4) values per grid entry, that the
Numba kernels read as constants. Nothing here is typed in by hand.
"""

from __future__ import annotations

import numpy as np
from gguf import quants


def _grid(cls: type) -> np.ndarray:
    """cls.grid (float32 [1, 1, entries, width], exact small integers) as int8 [entries, width]."""
    cls.init_grid()
    g = np.asarray(cls.grid, np.float32).reshape(cls.grid_shape)
    out = g.astype(np.int8)
    assert np.array_equal(out.astype(np.float32), g), cls.__name__
    return np.ascontiguousarray(out)


IQ2XXS_GRID = _grid(quants.IQ2_XXS)   # [256, 8] in {8, 25, 43}
IQ2XS_GRID = _grid(quants.IQ2_XS)     # [512, 8]
IQ2S_GRID = _grid(quants.IQ2_S)       # [1024, 8]
IQ3XXS_GRID = _grid(quants.IQ3_XXS)   # [256, 4] in 4..62
IQ3S_GRID = _grid(quants.IQ3_S)       # [512, 4] in 1..15
IQ1S_GRID = _grid(quants.IQ1_S)       # [2048, 8] in {-1, 0, 1}; IQ1_M shares it
# ksigns_iq2xs: 7 sign bits and their parity as the 8th (bit j: element j negative).
KSIGNS = np.frombuffer(quants.IQ2_XXS.ksigns, np.uint8).copy()
KVALUES_IQ4NL = np.array(quants.IQ4_NL.kvalues, np.int8)
KVALUES_MXFP4 = np.array(quants.MXFP4.kvalues, np.int8)  # e2m1 values, doubled
# ggml_e8m0_to_fp32_half of every MXFP4 exponent byte: 2**(e - 128).
E8M0_HALF = np.ascontiguousarray(quants.MXFP4.e8m0_to_fp32_half(np.arange(256, dtype=np.uint8)), np.float32)
