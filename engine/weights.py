"""From a GGUF file to the flat weight buffer and tables the decoder reads.

Matrices go into one uint8 buffer in the kernels' layout, norm vectors into one float32
array. Every tensor is checked against the architecture's expected shape and the
kernels' supported types before any byte is read. How the bytes get into memory is the
load mode (see resolve_load_mode): the file mapping used in place, or an image of the
file's tensor data read into anonymous memory by engine/load_reads.py. While the kernels
read the file's own layout, mmap and mlock use the mapping in place; otherwise the
image is a copy whose matrices are repacked in place (the kernels' layouts keep each
row's size), at the file's offsets minus the image's start.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType
from numallm import kernels
from numallm.engine.arch.slots import (
    EXPERTS,
    PER_HEAD,
    LayerMatrix,
    LayerVector,
    MatrixEntry,
    MatrixTable,
    ModelMatrix,
    ModelVector,
    VectorTable,
    WeightTables,
    matrix_shape,
    vector_length,
)
from numallm.engine.arch.spec import ArchSpec
from numallm.engine.gguf_file import GGUFFile, TensorInfo
from numallm.engine.load_lock import PageLock, check_lock_limit
from numallm.engine.load_reads import ALIGN, Piece, ReadJob, read_jobs
from numallm.errors import ModelFormatError, NumallmError
from numallm.numa.memory import merge_ranges
from numallm.numa.pages import PAGE, align_down, align_up, anonymous

_PIECE_BYTES = 2 << 20  # bytes packed at a time: half a read request, and they stay in cache


@dataclass
class Weights:
    buf: np.ndarray          # uint8: every matrix, kernel layout
    tables: WeightTables     # where each matrix is in buf, and every vector
    qtypes: frozenset[GGMLQuantizationType]
    matrix_bytes: int
    mapped: bool             # buf is a read-only mapping of the file
    load_mode: str = "mmap"  # the mode used: mmap, mlock, dio or none (auto resolved)
    direct: bool = False     # dio read with O_DIRECT to the end (no fallback)
    _maps: list[mmap.mmap] = field(default_factory=list, repr=False)
    _lock: PageLock | None = field(default=None, repr=False)

    def close(self) -> None:
        """Unlock and drop the buffers; a mapping is unmapped once nothing else refers to it."""
        if self._lock is not None:
            self._lock.unlock()  # now: a view still alive elsewhere must not keep pages locked
            self._lock = None
        self.buf = np.empty(0, np.uint8)
        _close_quietly(self._maps)
        self._maps.clear()


def _close_quietly(maps: list[mmap.mmap]) -> None:
    for m in maps:
        try:
            m.close()
        except BufferError:
            pass  # a view is still alive somewhere (a traceback's frame, a caller): the GC unmaps it


def resolve_load_mode(load_mode: str, numa_copies: bool = False) -> str:
    """auto: use the mapping in place unless the NUMA mode copies the weights anyway, then
    read straight into the copies (buffered: O_DIRECT is never a default, it halved decode
    speed on dual-socket machines when llama.cpp made it one)."""
    if load_mode != "auto":
        return load_mode
    return "none" if numa_copies else "mmap"


def _tensor(gf: GGUFFile, name: str) -> TensorInfo:
    t = gf.tensors.get(name)
    if t is None:
        raise ModelFormatError(f"{gf.path}: required tensor {name!r} is missing")
    return t


def _check_matrix(gf: GGUFFile, t: TensorInfo, rows: int, cols: int, n_expert: int = 0, per: str = "expert") -> None:
    """A [cols, rows] matrix, or with n_expert an expert tensor [cols, rows, n_expert]
    (or one of a block per head: per "head") whose experts are whole row groups of the
    kernels' layout (each is read on its own)."""
    shape = [cols, rows] + ([n_expert] if n_expert else [])
    if list(t.shape) != shape:
        raise ModelFormatError(f"{gf.path}: tensor {t.name!r} has shape {list(t.shape)}, "
                               f"expected {shape} for this model's hyperparameters")
    kernels.check_type(t.qtype, t.name, t.cols)
    group = kernels.row_group(t.qtype)
    if n_expert and rows % group:
        raise ModelFormatError(f"{gf.path}: tensor {t.name!r} has {rows} rows per {per}, not a multiple of "
                               f"the {group}-row tiles numallm lays {t.qtype.name} out in (requantize it)")


@dataclass(frozen=True)
class Layout:
    """Every tensor of a model, checked against the architecture and the kernels."""

    matrices: list[tuple[tuple[int, LayerMatrix], TensorInfo]]  # ((layer, slot), tensor)
    # None where a pipeline stage does not hold it (ArchSpec.embeds, ArchSpec.outputs)
    embd: TensorInfo | None
    out: TensorInfo | None  # the output projection; `embd`'s tensor when tied
    vectors: list[tuple[tuple[int, LayerVector], TensorInfo]]
    onorm: TensorInfo | None

    @property
    def all_mats(self) -> list[TensorInfo]:
        model = [t for t in (self.embd, self.out) if t is not None]
        return [t for _, t in self.matrices] + list({id(t): t for t in model}.values())

    @property
    def vec_list(self) -> list[TensorInfo]:
        return [t for _, t in self.vectors] + ([self.onorm] if self.onorm is not None else [])

    def read_span(self) -> tuple[int, int]:
        """(base, size): an image holds file bytes [base, base + size), base aligned for O_DIRECT."""
        tensors = self.all_mats + self.vec_list
        base = align_down(min(t.offset for t in tensors), ALIGN)
        return base, max(t.offset + t.nbytes for t in tensors) - base

    def vector_ranges(self, base: int) -> list[tuple[int, int]]:
        """Image byte ranges of the norm vectors."""
        return [(t.offset - base, t.offset - base + t.nbytes) for t in self.vec_list]


def check_model(gf: GGUFFile, spec: ArchSpec) -> Layout:
    """Check every tensor's presence, shape and type before any byte is read."""
    hp = spec.hparams
    matrices: list[tuple[tuple[int, LayerMatrix], TensorInfo]] = []
    for il in range(hp.n_layer):
        for slot, name in spec.matrix_names(il).items():
            t = _tensor(gf, name)
            if slot in PER_HEAD:
                _check_matrix(gf, t, *matrix_shape(slot, hp), hp.n_head, per="head")
            else:
                _check_matrix(gf, t, *matrix_shape(slot, hp), hp.n_expert if slot in EXPERTS else 0)
            matrices.append(((il, slot), t))
    embd = _tensor(gf, spec.token_embd) if spec.embeds else None
    out = (gf.tensors.get(spec.output) or _tensor(gf, spec.token_embd)) if spec.outputs else None
    for t in (embd, out):
        if t is not None:
            _check_matrix(gf, t, hp.n_vocab, hp.n_embd)
    vectors: list[tuple[tuple[int, LayerVector], TensorInfo]] = []
    for il in range(hp.n_layer):
        present = {slot: name for slot, name in spec.optional_vector_names(il).items() if name in gf.tensors}
        for vslot, name in (spec.vector_names(il) | present).items():
            t = _tensor(gf, name)
            _check_vector(gf, t, vector_length(vslot, hp))
            vectors.append(((il, vslot), t))
    onorm = _tensor(gf, spec.output_norm) if spec.outputs else None
    if onorm is not None:
        _check_vector(gf, onorm, hp.n_embd)
    return Layout(matrices, embd, out, vectors, onorm)


def matrix_tables(layout: Layout, n_layer: int, base: int) -> tuple[MatrixTable, MatrixTable]:
    """The layer and model matrix tables for an image of the file's bytes from `base`."""
    def entry(t: TensorInfo, group: int = 0) -> MatrixEntry:
        return MatrixEntry(int(t.qtype), t.rows, t.cols, t.offset - base, t.nbytes, group or kernels.row_group(t.qtype))

    layer = MatrixTable.empty((n_layer, len(LayerMatrix)))
    for (il, slot), t in layout.matrices:
        # A per-head matrix is cut between heads (the forward pass reads a head's block whole)
        layer.put((il, slot), entry(t, t.shape[1] if slot in PER_HEAD else 0))
    model = MatrixTable.empty((len(ModelMatrix),))
    for slot, t in ((ModelMatrix.TOKEN_EMBD, layout.embd), (ModelMatrix.OUTPUT, layout.out)):
        if t is not None:
            model.put(slot, entry(t))
    return layer, model


def make_weights(layout: Layout, n_layer: int, image: np.ndarray, base: int, *, mapped: bool, load_mode: str,
                 direct: bool, maps: list[mmap.mmap] | None = None) -> Weights:
    """The Weights of an image that holds (at least) every norm vector: the vectors are
    copied out of it, the tables point into it (and into every image of the same layout)."""
    layer, model = matrix_tables(layout, n_layer, base)
    vec_list = layout.vec_list
    vecs = np.empty(sum(t.shape[0] for t in vec_list), np.float32)
    vpos: dict[str, int] = {}
    pos = 0
    for t in vec_list:
        vecs[pos:pos + t.shape[0]] = image[t.offset - base:t.offset - base + t.nbytes].view(np.float32)
        vpos[t.name] = pos
        pos += t.shape[0]
    layer_vec = VectorTable.empty((n_layer, len(LayerVector)))
    for index, t in layout.vectors:
        layer_vec.offset[index], layer_vec.length[index] = vpos[t.name], t.shape[0]
    model_vec = VectorTable.empty((len(ModelVector),))
    if layout.onorm is not None:
        onorm = ModelVector.OUTPUT_NORM
        model_vec.offset[onorm], model_vec.length[onorm] = vpos[layout.onorm.name], layout.onorm.shape[0]
    mats = layout.all_mats
    return Weights(buf=image, tables=WeightTables(layer, model, layer_vec, model_vec, vecs),
                   qtypes=frozenset(t.qtype for t in mats), matrix_bytes=sum(t.nbytes for t in mats),
                   mapped=mapped, load_mode=load_mode, direct=direct, _maps=maps if maps is not None else [])


def load_weights(gf: GGUFFile, spec: ArchSpec, load_mode: str = "auto", numa_copies: bool = False,
                 hugepages: bool = True) -> Weights:
    """Check every tensor, then map or read the file and lay the weights out.

    numa_copies: the NUMA mode will copy the weights anyway (auto then reads, see
    resolve_load_mode). hugepages: a copy asks for transparent huge pages."""
    layout = check_model(gf, spec)
    mode = resolve_load_mode(load_mode, numa_copies)
    in_place = mode in ("mmap", "mlock") and not gf.derived and all(
        kernels.in_file_layout(t.qtype) for t in layout.all_mats)
    if in_place:
        image, base, maps, direct = _mapped_image(gf, layout.all_mats + layout.vec_list, mode)
    else:
        image, base, maps, direct = _read_image(gf, layout, mode, hugepages)
    w = make_weights(layout, spec.hparams.n_layer, image, base, mapped=in_place, load_mode=mode,
                     direct=direct, maps=maps)
    if mode == "mlock":
        try:
            w._lock = PageLock(image)
        except BaseException:
            w.close()
            raise
    return w


def _mapped_image(gf: GGUFFile, tensors: list[TensorInfo],
                  mode: str) -> tuple[np.ndarray, int, list[mmap.mmap], bool]:
    """The file mapping, used in place: (image, base 0, [mapping], no O_DIRECT)."""
    end = max(t.offset + t.nbytes for t in tensors)
    with open(gf.path, "rb") as f:
        if mode == "mlock":  # before any byte is read, so a low limit fails fast
            check_lock_limit(align_up(os.fstat(f.fileno()).st_size, PAGE))
        fmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(fmap) < end:
        # Touching a mapped page past the end of the file would be a SIGBUS, not an error.
        size = len(fmap)
        fmap.close()
        raise ModelFormatError(f"{gf.path}: the file ends at byte {size} but the weights need "
                               f"bytes up to {end}: it is truncated (re-download it)")
    return np.frombuffer(fmap, np.uint8), 0, [fmap], False


def _read_image(gf: GGUFFile, layout: Layout, mode: str,
                hugepages: bool) -> tuple[np.ndarray, int, list[mmap.mmap], bool]:
    """The file's tensor data read into anonymous memory at the file's own offsets minus
    `base` (aligned for O_DIRECT), repacked: (image, base, [its mapping], O_DIRECT used)."""
    base, size = layout.read_span()
    if mode == "mlock":  # before any byte is read, so a low limit fails fast
        check_lock_limit(align_up(size, PAGE))
    image, amap = anonymous(size, hugepages)
    try:
        # mmap or mlock get here only to repack: buffered reads share the page cache as a mapping would.
        direct = fill_image(gf, layout, image, base, [(0, size)], direct=mode == "dio")
    except BaseException:
        del image
        _close_quietly([amap])
        raise
    return image, base, [amap], direct


def fill_image(gf: GGUFFile, layout: Layout, image: np.ndarray, base: int, ranges: list[tuple[int, int]],
               *, direct: bool, setup: Callable[[], None] | None = None, desc: str = "loading weights") -> bool:
    """Read image bytes `ranges` (offsets into image = file offset - base) from the file and
    repack the matrix rows in them into the kernels' layout; True when O_DIRECT was used
    to the end. Ranges may overlap (they are merged); where one cuts a matrix, it must
    cut between its groups of kernels.row_group rows, as part() does. Every reading
    thread runs `setup` first (bind its memory to a NUMA node).

    The rows are packed in pieces of about _PIECE_BYTES, each in place by the thread
    whose read completed it, at once, while they are in its cache, and where its NUMA
    binding put them (kernels.pack is compiled and releases the GIL: the threads pack
    in parallel). Image bytes past the file's end hold derived tensors (GGUFFile.derived):
    their rows in `ranges` are computed, then packed alike, on a thread per CPU that runs `setup`."""
    packed = sorted((t.offset - base, t) for t in layout.all_mats if not kernels.in_file_layout(t.qtype))
    end = gf.file_size - base
    ranges = merge_ranges(ranges)
    jobs = [ReadJob(base + lo, image[lo:hi], _pieces(lo, hi, packed))
            for lo, hi in ((lo, min(hi, end)) for lo, hi in ranges) if lo < hi]
    direct = read_jobs(gf.path, jobs, direct=direct, setup=setup, desc=desc)
    derived = _derived_parts(gf, layout, base, [(max(lo, end), hi) for lo, hi in ranges if hi > end])
    if derived:
        threads = max(1, min(len(derived), len(os.sched_getaffinity(0))))
        with ThreadPoolExecutor(threads, initializer=setup) as pool:  # bound as the readers are
            for done in [pool.submit(_fill_derived, gf, image, part, packed) for part in derived]:
                done.result()
    return direct


# A derived tensor's rows [first, last): image bytes [a, b)
_DerivedPart = tuple[TensorInfo, int, int, int, int]


def _derived_parts(gf: GGUFFile, layout: Layout, base: int, ranges: list[tuple[int, int]]) -> list[_DerivedPart]:
    """The derived tensors' rows in image `ranges` (whole rows, as a placement range cuts a matrix)."""
    parts = []
    for t in (t for t in layout.all_mats if t.name in gf.derived):
        for lo, hi in ranges:
            a, b = max(lo, t.offset - base), min(hi, t.offset - base + t.nbytes)
            if a >= b:
                continue
            (first, cut_a), (last, cut_b) = (divmod(x - t.offset + base, t.row_bytes) for x in (a, b))
            if cut_a or cut_b:
                raise NumallmError(f"bytes [{a}, {b}) of the image cut {t.name!r} inside a row: a placement "
                                   "range must hold whole rows")
            parts.append((t, first, last, a, b))
    return parts


def _fill_derived(gf: GGUFFile, image: np.ndarray, part: _DerivedPart, packed: list[tuple[int, TensorInfo]]) -> None:
    """Compute a derived tensor's rows into the image and pack them as fill_image packs what it reads."""
    t, first, last, a, b = part
    dest = image[a:b]
    dest[:] = gf.derived[t.name](first, last)
    for lo, hi, pack in _pieces(a, b, packed):
        pack(dest[lo:hi])


def _pieces(lo: int, hi: int, packed: list[tuple[int, TensorInfo]]) -> list[Piece]:
    """The packing pieces of image bytes [lo, hi), offsets from lo: runs of rows to pack of
    about _PIECE_BYTES each (a large matrix is cut between row groups, small ones share
    a piece)."""
    pieces: list[Piece] = []
    start = lo  # where the piece being gathered starts
    runs: list[tuple[TensorInfo, int, int]] = []  # its rows to pack: image bytes [a, b) of t

    def cut(end: int) -> None:  # the piece ends with its last run; the next starts at `end`
        nonlocal start, runs
        if runs:
            pieces.append((start - lo, runs[-1][2] - lo, functools.partial(_pack_runs, tuple(runs), start)))
        start, runs = end, []

    for t0, t in packed:
        a, b = max(lo, t0), min(hi, t0 + t.nbytes)
        if a >= b:
            continue
        group = kernels.row_group(t.qtype) * t.row_bytes  # a packed unit: whole rows, whole tiles
        if (a - t0) % group or ((b - t0) % group and b != t0 + t.nbytes):
            raise NumallmError(f"bytes [{a}, {b}) of the image cut {t.name!r} inside a group of "
                               f"{kernels.row_group(t.qtype)} rows: a placement range must hold whole groups")
        if kernels.packed_nbytes(t.qtype, t.rows, t.cols) != t.nbytes:
            # The kernels promise same-size layouts (a shard is any row range); the buffer relies on it.
            raise NumallmError(f"the kernels' layout of {t.qtype.name} changes the size of {t.name!r}; "
                               "numallm.engine.weights needs updating for it")
        if not runs or a - start >= _PIECE_BYTES:
            cut(a)  # a piece starts at its first row
        while a < b:
            groups = max(1, (start + _PIECE_BYTES - a) // group)
            end = min(b, a + groups * group)
            runs.append((t, a, end))
            if end - start >= _PIECE_BYTES - group:
                cut(end)
            a = end
    cut(hi)
    return pieces


def _pack_runs(runs: tuple[tuple[TensorInfo, int, int], ...], start: int, dest: np.ndarray) -> None:
    """Pack each run of matrix rows in `dest` (image bytes from `start`) in place."""
    for t, a, b in runs:
        rows = dest[a - start:b - start]
        kernels.pack(t.qtype, rows, rows.size // t.row_bytes, t.cols, out=rows)


def _check_vector(gf: GGUFFile, t: TensorInfo, length: int) -> None:
    if t.qtype != GGMLQuantizationType.F32 or t.shape != (length,):
        raise ModelFormatError(f"{gf.path}: tensor {t.name!r} should be F32 of shape [{length}], "
                               f"found {t.qtype.name} {list(t.shape)}")
