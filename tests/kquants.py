"""Plain numpy encoders for the K-quant block formats gguf-py can only decode.

gguf.quants.quantize raises NotImplementedError for Q4_K, Q5_K and Q6_K, yet the
engine must be tested on them (Gemma 3 Q4_K_M uses both Q4_K and Q6_K). These
encoders use the simplest sound choice of scales (min/max per sub-block, not
llama.cpp's error-minimising search), which only makes them a little less accurate;
the bytes follow ggml-common.h exactly and are checked by decoding them with
gguf.quants.dequantize, an independent implementation.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

QK_K = 256  # values per K-quant super-block


def _f16(x: np.ndarray) -> np.ndarray:
    """Round to float16 and back, so later steps use the scale the decoder will see."""
    return x.astype(np.float16).astype(np.float32)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (an all-zero sub-block quantizes to zeros)."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape, np.float32), where=den != 0)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """[n] float -> [n, 2] little-endian float16 bytes."""
    return x.astype("<f2").reshape(-1, 1).view(np.uint8)


def _pack_scale_min_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins per block -> the 12 bytes get_scale_min_k4 reads."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return out


def _affine_k(blocks: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared Q4_K/Q5_K step: x ~ d*sc*q - dmin*m over 8 sub-blocks of 32 values.

    Returns (d, dmin, sc, m, q) with q in 0..qmax, shaped [n, 256].
    """
    sub = blocks.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)  # the min term only ever subtracts
    scale = (sub.max(axis=2) - lo) / qmax
    d = _f16(scale.max(axis=1) / 63)
    dmin = _f16(-lo.min(axis=1) / 63)
    # Rounding the scale up keeps the largest value inside the code range.
    sc = np.clip(np.ceil(_safe_div(scale, d[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(-lo, dmin[:, None])), 0, 63).astype(np.uint8)
    step = (d[:, None] * sc)[:, :, None]
    offset = (dmin[:, None] * m)[:, :, None]
    q = np.clip(np.rint(_safe_div(sub + offset, step)), 0, qmax).astype(np.uint8)
    return d, dmin, sc, m, q.reshape(-1, QK_K)


def _nibbles_q4k(q: np.ndarray) -> np.ndarray:
    """Low 4 bits of 256 values -> 128 bytes: each 64-value chunk as 32 lo/hi pairs."""
    chunks = q.reshape(-1, 4, 2, 32) & 0xF
    return (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(-1, 128)


def encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] float32 -> [n, 144] block_q4_K bytes (d, dmin, scales[12], qs[128])."""
    d, dmin, sc, m, q = _affine_k(blocks, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min_k4(sc, m), _nibbles_q4k(q)], axis=1)


def encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] float32 -> [n, 176] block_q5_K bytes (d, dmin, scales[12], qh[32], qs[128])."""
    d, dmin, sc, m, q = _affine_k(blocks, 31)
    # Bit 2c of qh[l] is the 5th bit of value 64c+l, bit 2c+1 that of value 64c+32+l.
    high = (q.reshape(-1, 8, 32) >> 4).astype(np.uint8)
    qh = np.zeros((q.shape[0], 32), np.uint8)
    for bit in range(8):
        qh |= high[:, bit] << bit
    return np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min_k4(sc, m), qh, _nibbles_q4k(q)], axis=1
    )


def encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] float32 -> [n, 210] block_q6_K bytes (ql[128], qh[64], scales[16], d)."""
    sub = blocks.reshape(-1, 16, 16)
    scale = np.abs(sub).max(axis=2) / 31  # symmetric: q in -31..31 fits the -32..31 range
    d = _f16(scale.max(axis=1) / 127)
    sc = np.clip(np.ceil(_safe_div(scale, d[:, None])), 0, 127).astype(np.int8)
    step = (d[:, None] * sc)[:, :, None]
    u = (np.clip(np.rint(_safe_div(sub, step)), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    # Each 128-value half is four 32-value rows r0..r3: ql packs (r0|r2<<4, r1|r3<<4),
    # qh packs the top two bits of r0..r3 at bit offsets 0, 2, 4, 6.
    lo = u & 0xF
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    hi = u >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return np.concatenate(
        [ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8), _f16_bytes(d)], axis=1
    )


_ENCODERS = {
    GGMLQuantizationType.Q4_K: encode_q4_k,
    GGMLQuantizationType.Q5_K: encode_q5_k,
    GGMLQuantizationType.Q6_K: encode_q6_k,
}
K_QUANT_TYPES = frozenset(_ENCODERS)


def quantize_k(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """[rows, cols] float -> [rows, cols/256*block_bytes] uint8, like gguf.quants.quantize."""
    rows, cols = data.shape
    if cols % QK_K:
        raise ValueError(f"{qtype.name} needs a row length that is a multiple of {QK_K}, got {cols}")
    blocks = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, QK_K)
    return _ENCODERS[qtype](blocks).reshape(rows, -1)
