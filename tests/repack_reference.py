"""The grouped layout of kernels/repack.py built with numpy array reshapes: the packer the
engine used before the compiled one, kept as the reference its output must equal bit
for bit (tests/test_repack.py)."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm.kernels.repack import GROUP, GROUPED


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


def reference_pack(qtype: T, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Rows [0, rows) of file bytes `raw` in the grouped layout, as a new flat uint8 array."""
    fields, nibbles = GROUPED[qtype]
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = cols // bs
    blocks = raw.reshape(-1)[:rows * nb * ts].reshape(rows, nb, ts)
    full = nb // GROUP * GROUP
    out = np.empty((rows, nb * ts), np.uint8)
    if full:
        out[:, :full * ts] = _regroup(blocks[:, :full].reshape(rows, -1, GROUP, ts), fields, nibbles).reshape(rows, -1)
    if full < nb:
        out[:, full * ts:] = _regroup(blocks[:, full:].reshape(rows, 1, nb - full, ts), fields, nibbles).reshape(rows, -1)
    return out.reshape(-1)
