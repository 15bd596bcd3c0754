"""Which GGUF tensor types the kernels handle, and the byte layout the kernels read.

Each type's layout is its record's (kernels/traits.py): TILED rows are interleaved by
tiles of 16 at load (families/q4_q8/tiles.py, families/kquants/tiles.py), the last
rows % 16 of a matrix (but the K-quants', kept as in the file) and REGROUPED rows
regrouped (families/q4_q8/grouped.py); IN_FILE types are read in the file's
own block layout, so for those packing is zero-copy. Either way the packed size is the file's, and a shard is any row range
that starts on a multiple of row_group and holds whole tiles or ends the matrix.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm.errors import UnsupportedError
from numallm.kernels.families.q4_q8.grouped import MAX_FIELDS
from numallm.kernels.families.q4_q8.tiles import TILE, pack_tiles_and_groups
from numallm.kernels.traits import BY_TYPE, CODES, GROUPED, IN_FILE, TILED, TILED_KINDS

SUPPORTED_TYPES: frozenset[T] = frozenset(T(code) for code in CODES)


def block_size(qtype: T) -> int:
    """Elements per quantization block (1 for the float types)."""
    return GGML_QUANT_SIZES[qtype][0]


def row_bytes(qtype: T, cols: int) -> int:
    """Bytes of one row of `cols` elements, in the file and in our layout."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    return cols // bs * ts


def check_type(qtype: T, tensor_name: str, cols: int) -> None:
    """Raise UnsupportedError unless the kernels can multiply this tensor."""
    try:
        qtype = T(qtype)
    except ValueError:
        raise UnsupportedError(
            f"tensor {tensor_name!r} has unknown GGML type {int(qtype)}; numallm supports "
            f"{_supported_names()}: re-quantize the model to one of them"
        ) from None
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedError(
            f"tensor {tensor_name!r} has type {qtype.name}, which numallm does not support; "
            f"supported: {_supported_names()}: re-quantize the model to one of them"
        )
    bs = block_size(qtype)
    if cols <= 0 or cols % bs:
        raise UnsupportedError(
            f"tensor {tensor_name!r} ({qtype.name}) has rows of {cols} elements, not a "
            f"positive multiple of the {qtype.name} block size {bs}: the file is malformed"
        )


def _supported_names() -> str:
    return ", ".join(sorted(t.name for t in SUPPORTED_TYPES))


def in_file_layout(qtype: T) -> bool:
    """Do the kernels read this type's rows as the file stores them (pack is zero-copy)?
    Plain Python, so a loader can decide how to read before Numba starts."""
    return BY_TYPE[T(qtype)].layout == IN_FILE


def row_group(qtype: T) -> int:
    """Rows per interleaved group of the packed layout (a shard starts on a multiple)."""
    return TILE if BY_TYPE[T(qtype)].layout == TILED else 1


def packed_nbytes(qtype: T, rows: int, cols: int) -> int:
    """Size of the packed buffer for `rows` rows: the same as the file's."""
    return rows * row_bytes(qtype, cols)


def pack(qtype: T, raw: np.ndarray, rows: int, cols: int, out: np.ndarray | None = None) -> np.ndarray:
    """The kernel layout of rows [0, rows) given as raw file bytes (for a tiled type, the
    first row starts a tile and rows [0, rows) hold whole tiles or end the matrix); `out` (uint8, at least
    packed_nbytes) receives it if given, else a new array does, or for the types read
    in file layout `raw` itself (zero copy).

    `out` may be `raw` itself (packing in place) but must not otherwise overlap it. The
    regrouping of families/q4_q8/tiles.py and grouped.py runs compiled, at several GB/s, without the GIL:
    threads packing disjoint ranges run in parallel."""
    n = packed_nbytes(qtype, rows, cols)
    flat = raw.reshape(-1)
    if flat.dtype != np.uint8 or flat.size < n:
        raise ValueError(f"pack: need {n} uint8 bytes for {rows} rows of {cols} {T(qtype).name}, got {flat.size} {flat.dtype}")
    if out is not None and (out.dtype != np.uint8 or out.size < n or not out.flags.c_contiguous):
        raise ValueError(f"pack: out must be C-contiguous uint8 of at least {n} bytes, got {out.size} {out.dtype}")
    qtype = T(qtype)
    if qtype in GROUPED or qtype in TILED_KINDS:  # the other types are read as the file stores them
        dest = np.empty(n, np.uint8) if out is None else out
        pack_rows(qtype, flat, rows, cols, dest.reshape(-1))
        return dest
    if out is None:
        return flat[:n]
    out.reshape(-1)[:n] = flat[:n]
    return out


# Per grouped type, the field widths in 16-bit words padded with zeros to MAX_FIELDS.
_FIELD_WORDS: dict[T, np.ndarray] = {
    qtype: np.array([w // 2 for w in fields] + [0] * (MAX_FIELDS - len(fields)), np.int64)
    for qtype, (fields, _) in GROUPED.items()}
_NO_FIELDS = np.zeros(MAX_FIELDS, np.int64)


def pack_rows(qtype: T, src: np.ndarray, rows: int, cols: int, dst: np.ndarray) -> None:
    """Write rows [0, rows) of file bytes `src` of a type of traits.GROUPED or TILED_KINDS
    into `dst` in the kernels' layout: for the tiled types tiles, then the last rows % 16
    grouped (Q4_K: as in the file); for the others all grouped. src and dst are flat uint8, either the same
    array or not overlapping."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    n = rows * (cols // bs) * ts  # even: every block size is
    if src.size < n or dst.size < n:  # the compiled loops read and write unchecked
        raise ValueError(f"pack: {rows} rows of {cols} {qtype.name} need {n} bytes, "
                         f"got {src.size} in and {dst.size} out")
    full = rows - rows % TILE if qtype in TILED_KINDS else 0
    if qtype not in GROUPED:  # Q4_K: the last rows % 16 stay as the file has them
        pack_tiles_and_groups(src[:n], dst[:n], full // TILE, 0, cols // bs, TILED_KINDS[qtype], ts // 2,
                              _NO_FIELDS, False)
        o = full * (cols // bs) * ts
        if not np.may_share_memory(src, dst):
            dst[o:n] = src[o:n]
        return
    pack_tiles_and_groups(src[:n], dst[:n], full // TILE, rows - full, cols // bs, TILED_KINDS.get(qtype, -1),
                          ts // 2, _FIELD_WORDS[qtype], GROUPED[qtype][1])
