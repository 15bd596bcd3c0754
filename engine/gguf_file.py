"""A lean, validating GGUF reader: metadata and the tensor table, nothing else.

`gguf.GGUFReader` builds a Python object per vocabulary entry (2.4 s to open SmolLM2,
10.7 s for Gemma 3) and fails on bad files with IndexError or reshape errors. This
reader uses the `gguf` package's constants and quant tables, checks every count,
length, type and offset against the file size and against sane limits before trusting
it, and reports any problem as one ModelFormatError line naming the file, what is
wrong and where (a byte offset, plus the key or tensor involved).
Tensor data is not read here: the loader maps or reads it later by offset.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from numallm.errors import BadInputError, ModelFormatError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Sanity limits: far above any real model, low enough that a corrupt count cannot make
# us loop for long or allocate much before the file-size checks catch it (a sparse
# file can be terabytes of zeros, so the file size alone is no bound).
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_DIMS = 4
MAX_KEY_LEN = (1 << 16) - 1   # the GGUF spec's limit for keys
MAX_TENSOR_NAME_LEN = 64      # GGML_MAX_NAME: llama.cpp rejects longer names too
MAX_STRING_LEN = 16 << 20     # chat templates are tens of KB; nothing real is near this
MAX_ARRAY_LEN = 1 << 24       # numeric arrays: at most 128 MiB even for 8-byte elements
MAX_STRING_ARRAY_LEN = 1 << 21  # vocabularies and merge lists stay below ~1M entries
MAX_ALIGNMENT = 1 << 16
# Metadata and tensor table together: Gemma 3's 262k-token vocabulary takes 6.5 MB.
# Parsing allocates at most ~4x the header bytes it reads (a copy, the decoded str,
# the mapped pages), so this bounds a hostile header to a few hundred MB.
MAX_HEADER_BYTES = 64 << 20
# Smallest encodings: a kv is an empty key (8) + type (4) + a 1-byte value; a tensor
# entry is an empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
_MIN_KV_BYTES = 13
_MIN_TENSOR_INFO_BYTES = 32
_SHOWN_NAME_LEN = 80

# The struct format (for one value) and numpy dtype (for arrays) of each fixed-size type.
_FIXED_TYPES: dict[GGUFValueType, tuple[str, str]] = {
    GGUFValueType.UINT8: ("B", "<u1"), GGUFValueType.INT8: ("b", "<i1"),
    GGUFValueType.UINT16: ("H", "<u2"), GGUFValueType.INT16: ("h", "<i2"),
    GGUFValueType.UINT32: ("I", "<u4"), GGUFValueType.INT32: ("i", "<i4"),
    GGUFValueType.UINT64: ("Q", "<u8"), GGUFValueType.INT64: ("q", "<i8"),
    GGUFValueType.FLOAT32: ("f", "<f4"), GGUFValueType.FLOAT64: ("d", "<f8"),
    GGUFValueType.BOOL: ("?", "?"),
}
_SCALAR_FORMATS = {t: struct.Struct("<" + f) for t, (f, _) in _FIXED_TYPES.items()}
_NUMPY_DTYPES = {t: np.dtype(d) for t, (_, d) in _FIXED_TYPES.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def show_name(name: str) -> str:
    """A key or tensor name as it appears in an error: quoted, escaped, shortened.

    Names come from the file: repr() keeps a newline or control character in one from
    breaking the one-line error, and the cut keeps a 64 KiB key from flooding it.
    """
    if len(name) > _SHOWN_NAME_LEN:
        return repr(name[:_SHOWN_NAME_LEN]) + "..."
    return repr(name)


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. `shape` is GGUF's order: shape[0] is the row length."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def cols(self) -> int:
        return self.shape[0]

    @property
    def rows(self) -> int:
        return self.nbytes // self.row_bytes

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        return self.shape[0] // block * size


# Rows [lo, hi) of a derived tensor (seen as 2-D), in the file's layout: flat uint8.
DerivedRows = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class GGUFFile:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    alignment: int
    data_offset: int
    file_size: int
    # Tensors computed from the file's own at load (an architecture's upgrade of an older
    # layout, engine/arch): each one's TensorInfo in `tensors` has an offset past
    # file_size, where no file byte is, and this gives its bytes.
    derived: Mapping[str, DerivedRows] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture", "")
        return arch if isinstance(arch, str) else ""


class _Cursor:
    """Bounds-checked little-endian reads from the mapped file."""

    def __init__(self, buf: mmap.mmap, path: str) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.end = min(self.size, MAX_HEADER_BYTES)  # no header read goes past this
        self.path = path

    def fail(self, what: str, at: int | None = None) -> ModelFormatError:
        where = self.pos if at is None else at
        return ModelFormatError(f"{self.path}: {what} (at byte {where})")

    def need(self, n: int, what: str, at: int | None = None) -> None:
        """Fail unless `n` more header bytes exist; `at` is where the culprit starts."""
        if self.pos + n <= self.end:
            return
        if self.pos + n > self.size:
            raise self.fail(f"truncated or corrupt file: {what} needs {n} bytes, "
                            f"only {self.size - self.pos} remain", at)
        raise self.fail(f"corrupt file: {what} needs {n} bytes, which would take the header "
                        f"past the limit of {MAX_HEADER_BYTES} bytes", at)

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (v,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return v

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def string(self, what: str, limit: int) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"{what} has length {n}, over the limit of {limit}", start)
        self.need(n, what)
        # Vocabularies hold pieces that are not valid UTF-8 on their own (byte tokens):
        # surrogateescape keeps the exact bytes recoverable instead of rejecting them.
        s = str(self.buf[self.pos:self.pos + n], "utf-8", "surrogateescape")
        self.pos += n
        return s

    def name(self, what: str, limit: int) -> str:
        start = self.pos
        s = self.string(what, limit)
        if not s:
            raise self.fail(f"empty {what}", start)
        return s

    def value_type(self, what: str) -> GGUFValueType:
        start = self.pos
        code = self.u32(what)
        try:
            return GGUFValueType(code)
        except ValueError:
            raise self.fail(f"unknown value type {code} for {what}", start) from None

    def value(self, vtype: GGUFValueType, key: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(f"value of {show_name(key)}", MAX_STRING_LEN)
        if vtype == GGUFValueType.ARRAY:
            return self.array(key)
        return self.unpack(_SCALAR_FORMATS[vtype], f"value of {show_name(key)}")

    def array(self, key: str) -> Any:
        shown = show_name(key)
        etype = self.value_type(f"element type of {shown}")
        start = self.pos
        count = self.u64(f"length of {shown}")
        if etype == GGUFValueType.ARRAY:
            raise self.fail(f"nested arrays are not supported ({shown})", start)
        limit = MAX_STRING_ARRAY_LEN if etype == GGUFValueType.STRING else MAX_ARRAY_LEN
        if count > limit:
            raise self.fail(f"array {shown} has {count} elements, over the limit of {limit}", start)
        if etype == GGUFValueType.STRING:
            # Each string takes at least its 8-byte length prefix.
            self.need(count * 8, f"array {shown} of {count} strings", start)
            return self.string_array(count, shown)
        dtype = _NUMPY_DTYPES[etype]
        nbytes = count * dtype.itemsize
        self.need(nbytes, f"array {shown} of {count} elements", start)
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += nbytes
        return out

    def string_array(self, count: int, shown: str) -> list[str]:
        # The hot loop of every load (262k tokens for Gemma 3): it only walks the length
        # prefixes, checked afterwards with numpy, and the strings are decoded together.
        buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
        starts: list[int] = []
        append = starts.append
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                append(pos)
                pos += 8 + n
        except (struct.error, OverflowError):  # a prefix past the end of the file: worded below
            pass
        if len(starts) < count or pos > self.end or (
                count and (np.diff(np.asarray(starts + [pos], np.int64)) - 8).max() > MAX_STRING_LEN):
            self.check_strings(count, shown)  # raises, naming the element
        out = _decode_strings(buf, self.pos, pos, starts)
        self.pos = pos
        return out

    def check_strings(self, count: int, shown: str) -> None:
        """Walk a string array's length prefixes one by one and raise for the first one
        that exceeds the limit or the file."""
        pos = self.pos
        for i in range(count):
            self.pos = pos
            self.need(8, f"length of element {i} of {shown}")
            (n,) = _U64.unpack_from(self.buf, pos)
            if n > MAX_STRING_LEN:
                raise self.fail(f"element {i} of {shown} has length {n}, over the limit "
                                f"of {MAX_STRING_LEN}", pos)
            self.pos = pos + 8
            self.need(n, f"element {i} of {shown}", pos)
            pos += 8 + n


def _decode_strings(buf: Any, lo: int, hi: int, starts: list[int]) -> list[str]:
    """The strings of a GGUF string array at buf[lo:hi], whose length prefixes start at
    `starts`. One decode of all of them (a str per element cost 0.3 us each): each
    prefix but its last byte is dropped, and that byte, the zero top byte of a length
    under MAX_STRING_LEN, separates the strings. An element holding a NUL byte itself
    makes the split miscount; then each is decoded alone."""
    if not starts:
        return []
    region = np.frombuffer(buf, np.uint8, hi - lo, lo)
    keep = np.ones(hi - lo, bool)
    first = np.asarray(starts) - lo
    for k in range(7):
        keep[first + k] = False
    parts = region[keep].tobytes().decode("utf-8", "surrogateescape").split("\x00")
    if len(parts) == len(starts) + 1:
        return parts[1:]
    ends = starts[1:] + [hi]
    return [str(buf[a + 8:b], "utf-8", "surrogateescape") for a, b in zip(starts, ends)]


def read_gguf(path: str | os.PathLike[str], header_only: bool = False) -> GGUFFile:
    """Read and validate a GGUF file's header, metadata and tensor table.

    Raises BadInputError for a path that is not a readable regular file and
    ModelFormatError (both exit status 2) for anything wrong inside it.
    header_only: accept tensor data past the end of the file (a file cut after its
    tensor table, for plans that read no weights: `numallm placement --dry-run`).
    """
    spath = os.fspath(path)
    try:
        st = os.stat(spath)
    except FileNotFoundError:
        raise BadInputError(f"{spath}: no such file") from None
    except OSError as e:
        raise BadInputError(f"{spath}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"{spath}: is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block open() forever; a device has no meaningful size.
        raise BadInputError(f"{spath}: not a regular file")
    try:
        with open(spath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise ModelFormatError(f"{spath}: not a GGUF file (only {size} bytes)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except PermissionError:
        raise BadInputError(f"{spath}: permission denied") from None
    except OSError as e:
        raise BadInputError(f"{spath}: cannot read ({e.strerror})") from None
    try:
        return _parse(_Cursor(buf, spath), size, header_only)
    finally:
        buf.close()


def _parse(cur: _Cursor, size: int, header_only: bool = False) -> GGUFFile:
    if cur.buf[:4] != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {bytes(cur.buf[:4])!r}, expected b'GGUF')", 0)
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and version >> 16 in SUPPORTED_VERSIONS:
            raise cur.fail("big-endian GGUF files are not supported; convert the model "
                           "on a little-endian machine", 4)
        raise cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)", 4)
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    if n_tensors > MAX_TENSORS:
        raise cur.fail(f"tensor count {n_tensors} is over the limit of {MAX_TENSORS}", 8)
    if n_kv > MAX_KV:
        raise cur.fail(f"metadata count {n_kv} is over the limit of {MAX_KV}", 16)
    least = n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES
    cur.need(least, f"a table of {n_kv} metadata entries and {n_tensors} tensors", 8)

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.name("metadata key", MAX_KEY_LEN)
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {show_name(key)}", start)
        metadata[key] = cur.value(cur.value_type(f"type of {show_name(key)}"), key)

    alignment = _alignment(cur, metadata)
    raw_infos = []
    for _ in range(n_tensors):
        start = cur.pos
        name = cur.name("tensor name", MAX_TENSOR_NAME_LEN)
        shown = show_name(name)
        n_dims = cur.u32(f"dimension count of {shown}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {shown} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)", start)
        shape = tuple(cur.u64(f"shape of {shown}") for _ in range(n_dims))
        code = cur.u32(f"type of {shown}")
        offset = cur.u64(f"offset of {shown}")
        raw_infos.append((start, name, shape, code, offset))

    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    tensors: dict[str, TensorInfo] = {}
    for start, name, shape, code, offset in raw_infos:
        tensors[name] = _tensor_info(cur, start, name, shape, code, offset, alignment,
                                     data_offset, None if header_only else size, tensors)
    _check_no_overlap(cur, tensors)
    return GGUFFile(path=cur.path, version=version, metadata=metadata, tensors=tensors,
                    alignment=alignment, data_offset=data_offset, file_size=size)


def _alignment(cur: _Cursor, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    # bool is an int subclass: a BOOL-typed key must not pass as alignment 1.
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
            or alignment > MAX_ALIGNMENT or alignment & (alignment - 1)):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two "
                       f"from 1 to {MAX_ALIGNMENT}")
    return alignment


def _tensor_info(cur: _Cursor, start: int, name: str, shape: tuple[int, ...], code: int,
                 offset: int, alignment: int, data_offset: int, size: int | None,
                 seen: dict[str, TensorInfo]) -> TensorInfo:
    """One checked tensor table entry; size None: the data need not be in the file."""
    shown = show_name(name)
    if name in seen:
        raise cur.fail(f"duplicate tensor name {shown}", start)
    try:
        qtype = GGMLQuantizationType(code)
    except ValueError:
        raise cur.fail(f"tensor {shown} has unknown type code {code}", start) from None
    if qtype not in GGML_QUANT_SIZES:
        raise cur.fail(f"tensor {shown} has type {qtype.name}, which has no known block layout", start)
    if any(d == 0 for d in shape):
        raise cur.fail(f"tensor {shown} has an empty dimension {list(shape)}", start)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if shape[0] % block:
        raise cur.fail(f"tensor {shown} row length {shape[0]} is not a multiple of "
                       f"{qtype.name}'s block size {block}", start)
    n_elems = 1
    for d in shape:
        n_elems *= d
    nbytes = n_elems // block * type_size
    if offset % alignment:
        raise cur.fail(f"tensor {shown} offset {offset} is not aligned to {alignment}", start)
    if size is not None and data_offset + offset + nbytes > size:
        raise cur.fail(f"truncated file: tensor {shown} needs bytes "
                       f"{data_offset + offset}..{data_offset + offset + nbytes} "
                       f"but the file has {size}", start)
    return TensorInfo(name=name, qtype=qtype, shape=shape, offset=data_offset + offset, nbytes=nbytes)


def _check_no_overlap(cur: _Cursor, tensors: dict[str, TensorInfo]) -> None:
    spans = sorted(tensors.values(), key=lambda t: t.offset)
    for a, b in pairwise(spans):
        if a.offset + a.nbytes > b.offset:
            raise cur.fail(f"tensors {show_name(a.name)} and {show_name(b.name)} overlap "
                           f"in the data section", a.offset)
