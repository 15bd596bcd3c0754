"""From a GGUF file to the flat weight buffer and tables the decoder reads.

Matrices go into one uint8 buffer in the kernels' layout (the file mapping itself when
the kernels read the file's own layout and the load mode maps the file), norm vectors
into one float32 array. Every tensor is checked against the architecture's expected
shape and the kernels' supported types before any byte is copied.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType

from numallm import kernels
from numallm.engine.arch.spec import MATRICES, VECTORS, ArchSpec, HParams
from numallm.engine.gguf_file import GGUFFile, TensorInfo
from numallm.errors import ModelFormatError
from numallm.progress import progress_bar

_ALIGN = 64  # cache-line alignment of every matrix in a copied buffer


@dataclass
class Weights:
    buf: np.ndarray          # uint8: every matrix, kernel layout
    wtab: np.ndarray         # int64 [n_layer, len(MATRICES), 6], see engine/forward.py
    gtab: np.ndarray         # int64 [2, 6]: token embeddings, output projection
    vecs: np.ndarray         # float32: every norm vector
    vtab: np.ndarray         # int64 [n_layer, len(VECTORS), 2]
    gvec: np.ndarray         # int64 [2]: the final norm
    qtypes: frozenset[GGMLQuantizationType]
    matrix_bytes: int
    mapped: bool             # buf is a read-only mapping of the file
    _mmap: mmap.mmap | None = field(default=None, repr=False)

    def close(self) -> None:
        """Drop the buffers; a mapping is unmapped once nothing else refers to it."""
        self.buf = np.empty(0, np.uint8)
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a view is still alive somewhere; the GC unmaps it later
            self._mmap = None


def _expected_shapes(hp: HParams) -> dict[str, tuple[int, int]]:
    """(rows, cols) of each per-layer matrix."""
    qdim = hp.n_head * hp.head_dim
    kvdim = hp.n_head_kv * hp.head_dim
    return {"q": (qdim, hp.n_embd), "k": (kvdim, hp.n_embd), "v": (kvdim, hp.n_embd),
            "o": (hp.n_embd, qdim), "gate": (hp.n_ff, hp.n_embd), "up": (hp.n_ff, hp.n_embd),
            "down": (hp.n_embd, hp.n_ff)}


def _tensor(gf: GGUFFile, name: str) -> TensorInfo:
    t = gf.tensors.get(name)
    if t is None:
        raise ModelFormatError(f"{gf.path}: required tensor {name!r} is missing")
    return t


def _check_matrix(gf: GGUFFile, t: TensorInfo, rows: int, cols: int) -> None:
    if len(t.shape) != 2 or (t.rows, t.cols) != (rows, cols):
        raise ModelFormatError(f"{gf.path}: tensor {t.name!r} has shape {list(t.shape)}, "
                               f"expected [{cols}, {rows}] for this model's hyperparameters")
    kernels.check_type(t.qtype, t.name, t.cols)


def load_weights(gf: GGUFFile, spec: ArchSpec, load_mode: str = "auto") -> Weights:
    """Check every tensor, then map or read the file and lay the weights out."""
    hp = spec.hparams
    shapes = _expected_shapes(hp)
    matrices: list[tuple[tuple[int, ...], TensorInfo]] = []
    for il in range(hp.n_layer):
        for m, fmt in enumerate(spec.matrices):
            t = _tensor(gf, fmt.format(il))
            _check_matrix(gf, t, *shapes[MATRICES[m]])
            matrices.append(((il, m), t))
    embd = _tensor(gf, spec.token_embd)
    _check_matrix(gf, embd, hp.n_vocab, hp.n_embd)
    out = gf.tensors.get(spec.output, embd)
    _check_matrix(gf, out, hp.n_vocab, hp.n_embd)
    vectors: list[tuple[tuple[int, ...], TensorInfo]] = []
    for il in range(hp.n_layer):
        for v, fmt in enumerate(spec.vectors):
            if fmt is not None:
                t = _tensor(gf, fmt.format(il))
                length = hp.head_dim if VECTORS[v] in ("q_norm", "k_norm") else hp.n_embd
                _check_vector(gf, t, length)
                vectors.append(((il, v), t))
    onorm = _tensor(gf, spec.output_norm)
    _check_vector(gf, onorm, hp.n_embd)

    with open(gf.path, "rb") as f:
        fmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    data = np.frombuffer(fmap, dtype=np.uint8)
    all_mats = [t for _, t in matrices] + [embd] + ([out] if out is not embd else [])
    mode = "mmap" if load_mode == "auto" else load_mode

    # Pack each matrix once; zero-copy where the kernels read the file's layout.
    packed: dict[str, np.ndarray] = {}
    bar = progress_bar(sum(t.nbytes for t in all_mats), "loading weights")
    for t in all_mats:
        raw = data[t.offset:t.offset + t.nbytes]
        packed[t.name] = kernels.pack(t.qtype, raw, t.rows, t.cols)
        bar.update(t.nbytes)
    bar.close()
    zero_copy = mode == "mmap" and all(np.shares_memory(packed[t.name], data) for t in all_mats)

    if zero_copy:
        buf = data
        offsets = {t.name: t.offset for t in all_mats}
        sizes = {t.name: t.nbytes for t in all_mats}
        keep_map: mmap.mmap | None = fmap
    else:
        offsets, sizes, total = {}, {}, 0
        for t in all_mats:
            offsets[t.name] = total
            sizes[t.name] = packed[t.name].nbytes
            total += (packed[t.name].nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        buf = np.empty(total, np.uint8)
        for t in all_mats:
            buf[offsets[t.name]:offsets[t.name] + sizes[t.name]] = packed[t.name]
        keep_map = None

    def entry(t: TensorInfo) -> list[int]:
        return [int(t.qtype), t.rows, t.cols, offsets[t.name], sizes[t.name], kernels.row_group(t.qtype)]

    wtab = np.zeros((hp.n_layer, len(MATRICES), 6), np.int64)
    for (il, m), t in matrices:
        wtab[il, m] = entry(t)
    gtab = np.array([entry(embd), entry(out)], np.int64)

    vec_list = [t for _, t in vectors] + [onorm]
    vecs = np.empty(sum(t.shape[0] for t in vec_list), np.float32)
    vpos: dict[str, int] = {}
    pos = 0
    for t in vec_list:
        vecs[pos:pos + t.shape[0]] = data[t.offset:t.offset + t.nbytes].view(np.float32)
        vpos[t.name] = pos
        pos += t.shape[0]
    vtab = np.zeros((hp.n_layer, len(VECTORS), 2), np.int64)
    for (il, v), t in vectors:
        vtab[il, v] = (vpos[t.name], t.shape[0])
    gvec = np.array([vpos[onorm.name], onorm.shape[0]], np.int64)

    packed.clear()
    del data
    if keep_map is None:
        try:
            fmap.close()
        except BufferError:
            pass
    return Weights(buf=buf, wtab=wtab, gtab=gtab, vecs=vecs, vtab=vtab, gvec=gvec,
                   qtypes=frozenset(t.qtype for t in all_mats),
                   matrix_bytes=sum(sizes.values()), mapped=zero_copy, _mmap=keep_map)


def _check_vector(gf: GGUFFile, t: TensorInfo, length: int) -> None:
    if t.qtype != GGMLQuantizationType.F32 or t.shape != (length,):
        raise ModelFormatError(f"{gf.path}: tensor {t.name!r} should be F32 of shape [{length}], "
                               f"found {t.qtype.name} {list(t.shape)}")
