"""The grouped layout of Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 rows, and packing into it.

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
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

GROUP = 8
CHUNK_BYTES = 4 << 20  # rows packed at a time: keeps numpy's temporaries small and in cache
# (byte widths of the fields before the quants in a block, whether quants are nibbles)
GROUPED: dict[T, tuple[tuple[int, ...], bool]] = {
    T.Q4_0: ((2,), True), T.Q4_1: ((2, 2), True), T.Q5_0: ((2, 4), True),
    T.Q5_1: ((2, 2, 4), True), T.Q8_0: ((2,), False)}


def _regroup(blocks: np.ndarray, fields: tuple[int, ...], nibbles: bool) -> np.ndarray:
    """[rows, k, G, block bytes] -> [rows, k, G * block bytes] in the grouped layout."""
    rows, k, g, _ = blocks.shape
    starts = np.cumsum((0,) + fields)
    parts = [blocks[..., a:a + n].reshape(rows, k, n * g) for a, n in zip(starts, fields)]
    q = blocks[..., starts[-1]:]
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
    fields, nibbles = GROUPED[qtype]
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = cols // bs
    blocks = raw[: rows * nb * ts].reshape(rows, nb, ts)
    dest = out[: rows * nb * ts].reshape(rows, nb * ts)
    full = nb // GROUP * GROUP
    step = max(1, CHUNK_BYTES // (nb * ts))
    for r0 in range(0, rows, step):
        part, dpart = blocks[r0:r0 + step], dest[r0:r0 + step]
        n = part.shape[0]
        if full:
            dpart[:, : full * ts] = _regroup(part[:, :full].reshape(n, -1, GROUP, ts), fields, nibbles).reshape(n, -1)
        if full < nb:
            dpart[:, full * ts:] = _regroup(part[:, full:].reshape(n, 1, nb - full, ts), fields, nibbles).reshape(n, -1)
