"""Random blocks of the types gguf-py cannot encode (the i-quants), and of TQ1_0,
TQ2_0 and MXFP4 alike, for tests and synthetic models.

Random bytes are a valid block of every one of these types (any grid index, sign
pattern and sub-scale is one a file can hold); only the block scale needs a sane
value. `random_blocks` draws such blocks, `scaled_like` scales them so that the
dequantized weights have a given standard deviation (a synthetic model's matrices
keep their activations O(1) that way, as its float weights do).
"""

from __future__ import annotations

import zlib

import numpy as np
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T

QK_K = 256
RANDOM_BLOCK_TYPES = frozenset({T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S,
                                T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4})


def set_scales(raw: np.ndarray, qtype: T, d: np.ndarray) -> None:
    """Write the block scales d [rows, blocks] into raw [rows, blocks, block bytes]: float16
    (IQ1_M's in the top nibbles of its 4 scale words) or, for MXFP4, the e8m0 exponent
    nearest log2(|d|) (d then is 2**(e - 128): the sign is dropped)."""
    if qtype == T.MXFP4:
        with np.errstate(divide="ignore"):
            e = np.rint(np.log2(np.abs(d))) + 128
        raw[:, :, 0] = np.clip(np.nan_to_num(e, neginf=0), 0, 255).astype(np.uint8)
        return
    bits = d.astype(np.float16).view(np.uint16)
    if qtype == T.IQ1_M:
        sc = raw[:, :, 48:56].copy().view(np.uint16)
        for i in range(4):
            sc[..., i] = (sc[..., i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        raw[:, :, 48:56] = sc.view(np.uint8)
    else:
        off = {T.TQ1_0: 52, T.TQ2_0: 64}.get(qtype, 0)
        raw[:, :, off:off + 2] = bits.reshape(*bits.shape, 1).view(np.uint8)


def random_blocks(qtype: T, rows: int, cols: int, seed: int = 0, fill: int | None = None,
                  scale: float | None = None) -> np.ndarray:
    """File bytes [rows, row bytes]: random (or all `fill`) bytes with block scales uniform
    in [1e-3, 2e-2] (or all `scale`)."""
    rng = np.random.default_rng(seed)
    bs, ts = GGML_QUANT_SIZES[qtype]
    shape = (rows, cols // bs, ts)
    raw = rng.integers(0, 256, shape, dtype=np.uint8) if fill is None else np.full(shape, fill, np.uint8)
    d = rng.uniform(1e-3, 2e-2, shape[:2]) if scale is None else np.full(shape[:2], scale)
    set_scales(raw, qtype, d)
    return raw.reshape(rows, -1)


def scaled_like(data: np.ndarray, qtype: T) -> np.ndarray:
    """Random blocks of qtype for a float32 [rows, cols] matrix, seeded by its bytes, with
    each block scaled so that it dequantizes to the matrix's standard deviation."""
    rows, cols = data.shape
    bs, ts = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, rows, cols, seed=zlib.crc32(data.tobytes()), scale=1.0)
    rms = np.sqrt(np.mean(quants.dequantize(raw, qtype).reshape(rows, -1, bs).astype(np.float64) ** 2, axis=2))
    blocks = raw.reshape(rows, -1, ts)
    set_scales(blocks, qtype, np.float64(data.std()) / np.maximum(rms, 1e-6))
    return blocks.reshape(rows, -1)
