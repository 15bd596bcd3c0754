"""The KV cache: one block per sequence slot, layer, KV head and position.

Two arrays, K and V, each [slot, layer, kv_head, position, width], chosen once because
placement (heads to nodes), the server's batching (slots) and sliding-window
architectures all index them the same way. An ordinary attention keeps each KV head's
key and value there (width head_dim). Multi-head latent attention (deepseek2) has one
KV head for all query heads and caches, as llama.cpp does, only what the absorbed form
reads: K holds each token's normed latent (kv_lora_rank values, read as keys and as
values) and V its rotated key part (n_rot values). F16 (llama.cpp's default) is stored
as float16 bits in uint16.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from numallm.engine.arch.spec import HParams
from numallm.engine.options import KV_TYPES
from numallm.errors import BadInputError
from numallm.numa.pages import anonymous

# Bytes per cached element: float16 is kept as its bits in uint16.
KV_ITEMSIZE = {"f16": 2, "f32": 4}


def kv_widths(hp: HParams) -> tuple[int, int]:
    """Values per position and KV head in the K and in the V array."""
    if hp.kv_lora_rank:
        return hp.kv_lora_rank, hp.n_rot
    return hp.head_dim, hp.head_dim


def kv_bytes_per_token(hp: HParams, kv_type: str) -> int:
    """Cache bytes one token takes over every layer and KV head."""
    return hp.n_layer * hp.n_head_kv * sum(kv_widths(hp)) * KV_ITEMSIZE[kv_type]


def kv_layout(hp: HParams, n_ctx: int, n_slots: int, kv_type: str) -> tuple[tuple[tuple[int, ...], ...], type]:
    """((K shape, V shape), dtype) of the two arrays."""
    if kv_type not in KV_TYPES:
        raise BadInputError(f"cache type {kv_type!r} is not supported (use one of {', '.join(KV_TYPES)})")
    dtype = np.uint16 if KV_ITEMSIZE[kv_type] == 2 else np.float32
    return tuple((n_slots, hp.n_layer, hp.n_head_kv, n_ctx, w) for w in kv_widths(hp)), dtype


def head_ranges(shape: tuple[int, ...], itemsize: int, heads: Iterable[int]) -> list[tuple[int, int]]:
    """Byte ranges of one K (or V) array of `shape` holding KV heads `heads`, for every slot and layer."""
    n_slots, n_layer, n_head_kv, n_ctx, width = shape
    block = n_ctx * width * itemsize  # one head of one layer of one slot
    return [(((s * n_layer + il) * n_head_kv + h) * block, ((s * n_layer + il) * n_head_kv + h + 1) * block)
            for s in range(n_slots) for il in range(n_layer) for h in heads]


def lazy_zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A zeroed array whose memory is faulted in 4 KiB at a time as it is written, so a
    large context costs memory only as used. Not np.zeros: numpy asks for transparent
    huge pages for large arrays, and a run's first token writes position 0 of every
    layer and head, one write in each 2 MiB of the cache at 4096 positions: all of it
    faulted in and zeroed at once (2 GiB for a 7B model; benchmarks/README.md, round eleven)."""
    buf, _ = anonymous(int(np.prod(shape)) * np.dtype(dtype).itemsize, hugepages=False)
    return buf.view(dtype).reshape(shape)


class KVCache:
    def __init__(self, hp: HParams, n_ctx: int, n_slots: int = 1, kv_type: str = "f16") -> None:
        (k_shape, v_shape), dtype = kv_layout(hp, n_ctx, n_slots, kv_type)
        self.k, self.v = (lazy_zeros(shape, dtype) for shape in (k_shape, v_shape))
        self.kv_type = kv_type
        self.n_ctx = n_ctx

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
