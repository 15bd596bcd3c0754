"""The grouped layout of kernels/families/q4_q8/grouped.py built with numpy array reshapes (the packer the
engine used before the compiled one) and the tiled layout of kernels/families/q4_q8/tiles.py: the
references the compiled packers must equal bit for bit (tests/test_repack.py)."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm.kernels.families.q4_q8.grouped import GROUP
from numallm.kernels.families.q4_q8.tiles import TILE, q6k_vector
from numallm.kernels.traits import GROUPED
from numallm.kernels.traits import TILED_KINDS as KINDS

# The scale fields (bytes each) before the quant words of the tiled types that are not
# grouped: their last rows % 16 stay as the file has them.
TILE_FIELDS = {T.Q4_K: (2, 2), T.Q5_K: (2, 2), T.IQ4_NL: (2,), T.MXFP4: (1,), T.IQ4_XS: (2, 2), T.TQ2_0: (2,)}


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
    """Rows [0, rows) of file bytes `raw` in the kernels' layout, as a new flat uint8
    array: tiles of 16 rows for the tiled types, then the rest grouped (or as in the
    file)."""
    full = rows // TILE * TILE if qtype in KINDS else 0
    rb = cols // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1]
    flat = raw.reshape(-1)
    parts = []
    if full:
        parts.append(_tiled(qtype, flat[:full * rb], full, cols))
    if rows > full and qtype in GROUPED:
        parts.append(_grouped(qtype, flat[full * rb:rows * rb], rows - full, cols))
    elif rows > full:
        parts.append(flat[full * rb:rows * rb])
    return np.concatenate(parts)


def _tiled(qtype: T, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Whole tiles: per tile and block, the 16 rows' scale fields, then their quants by
    4-byte words, word-major."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(rows // TILE, TILE, cols // bs, ts).transpose(0, 2, 1, 3)  # [tile, block, row, bytes]
    if qtype == T.TQ2_0:  # d (the block's last 2 bytes) first
        blocks = np.concatenate([blocks[..., 64:], blocks[..., :64]], axis=-1)
    if qtype == T.Q6_K:  # d (the block's last 2 bytes) first, then its 52 words in the kernel's read order
        order = np.argsort([q6k_vector.py_func(v) for v in range(52)])
        blocks = np.concatenate([blocks[..., 208:], blocks[..., :208].reshape(*blocks.shape[:3], 52, 4)[..., order, :]
                                 .reshape(*blocks.shape[:3], 208)], axis=-1)
    fields = (2,) if qtype == T.Q6_K else GROUPED[qtype][0] if qtype in GROUPED else TILE_FIELDS[qtype]
    a = sum(fields)
    width = fields[0]  # every field of a type is as wide: 2 (float16) or MXFP4's 1
    parts = [blocks[..., f:f + width].reshape(*blocks.shape[:2], -1) for f in range(0, a, width)]
    words = blocks[..., a:].reshape(*blocks.shape[:3], -1, 4).transpose(0, 1, 3, 2, 4)
    parts.append(words.reshape(*blocks.shape[:2], -1))
    return np.concatenate(parts, axis=-1).reshape(-1)


def _grouped(qtype: T, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
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
