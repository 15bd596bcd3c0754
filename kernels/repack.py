"""The grouped layout of Q4_0, Q4_1 and Q8_0 rows, and packing file bytes into it.

File layout: blocks of 32 one after another, each its float16 scale(s) then its
quants. The SIMD kernels spend most of their instructions on those scalars (a load,
a conversion and a multiply per scale per block), so each row is regrouped, in
place of the same bytes, into groups of 8 blocks (the last group of a row holds the
remaining 1-7):

    [d x G float16] [m x G float16, Q4_1 only] [quants of the G blocks]

so that one vcvtph2ps converts 8 scales and one multiply applies the activation's 8
block scales. Q4_0/Q4_1 quants are regrouped by pairs of blocks (A, B): 32 bytes
with byte j = A's quant j | B's quant j << 4, so a 32-byte load masked or shifted
lines up with 32 int8 activations without shuffles (the odd last block of a group
keeps the file's 16-byte nibble order). Q8_0 quants stay as they are.
A row keeps its size, so packed_nbytes is the file size and shards are any row range.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

GROUP = 8
# (bytes of float16 scale fields at the start of a block, whether quants are nibbles)
GROUPED: dict[T, tuple[int, bool]] = {T.Q4_0: (2, True), T.Q4_1: (4, True), T.Q8_0: (2, False)}


def _regroup(blocks: np.ndarray, scale_bytes: int, nibbles: bool) -> np.ndarray:
    """[rows, k, G, block bytes] -> [rows, k, G * block bytes] in the grouped layout."""
    rows, k, g, _ = blocks.shape
    parts = [blocks[..., f:f + 2].reshape(rows, k, 2 * g) for f in range(0, scale_bytes, 2)]
    q = blocks[..., scale_bytes:]
    if nibbles:
        vals = np.concatenate([q & 15, q >> 4], axis=-1)  # [rows, k, G, 32] in element order
        even = g // 2 * 2
        parts.append((vals[..., 0:even:2, :] | (vals[..., 1:even:2, :] << 4)).reshape(rows, k, -1))
        if g % 2:
            parts.append(q[..., g - 1, :])
    else:
        parts.append(q.reshape(rows, k, -1))
    return np.concatenate(parts, axis=-1)


def pack_grouped(qtype: T, raw: np.ndarray, rows: int, cols: int, out: np.ndarray) -> None:
    """Write rows [0, rows) of file bytes `raw` into `out` (uint8, rows * row bytes)."""
    scale_bytes, nibbles = GROUPED[qtype]
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = cols // bs
    blocks = raw[: rows * nb * ts].reshape(rows, nb, ts)
    dest = out[: rows * nb * ts].reshape(rows, nb * ts)
    full = nb // GROUP * GROUP
    if full:
        dest[:, : full * ts] = _regroup(blocks[:, :full].reshape(rows, -1, GROUP, ts), scale_bytes, nibbles).reshape(rows, -1)
    if full < nb:
        dest[:, full * ts:] = _regroup(blocks[:, full:].reshape(rows, 1, nb - full, ts), scale_bytes, nibbles).reshape(rows, -1)
