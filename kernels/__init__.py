"""Arithmetic on quantized GGUF blocks. Knows nothing about models or NUMA.

Python interface (all `qtype` are gguf.GGMLQuantizationType):
    SUPPORTED_TYPES, check_type, row_group, packed_nbytes, pack   (load time)
    matvec, matmul, get_rows, dequantize, warmup                  (run time)
    bandwidth.memory_read_bandwidth, bandwidth.run_pinned         (benchmarks)

Numba interface: numallm.kernels.jit.{matvec, matmul, get_rows}(qcode, w, rows, cols,
...) take the integer type code `int(qtype)` and otherwise the arguments of the
Python functions; call them from your own @njit(nogil=True) code (a whole token
per pinned worker). They dispatch on qcode inside the compiled code, check shapes
and the row range once per call (ValueError) and allocate only the int8 copy of x.

Design (issue 5):
- Layout. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 rows are regrouped at load into groups of 8
  blocks (kernels/repack.py), which made their kernels 1.5-3x faster than on the file
  layout; the K-quants and float types are read as the file stores them (zero-copy
  pack). A row keeps its size and place, so packed_nbytes is the file's and
  row_group is 1: a shard may start on any row.
- matvec quantizes x to int8 blocks of 32 (llama.cpp's q8_0/q8_1, kernels/actq.py)
  and runs integer dot products as LLVM vector IR (kernels/vec.py: vpdpbusd with
  VNNI, vpmaddubsw/vpmaddwd with AVX2, plain LLVM vectors elsewhere). Its error is
  that of quantizing x: relative L2 about 5e-3 against float64, bounded per row in
  tests/test_kernels.py. F32/F16/BF16 keep x in float32 (kernels/floatdot.py).
- matmul of 32 or more tokens (jit.GEMM_MIN_TOKENS) quantizes them to int8 once and unpacks tiles of 16
  rows to unsigned byte quants with a scale and offset per sub-block
  (kernels/unpack.py), then multiplies each tile vector with 8 tokens at a time by
  vpdpbusd on zmm registers (kernels/igemm.py, vec_tile.py; twice the float32
  micro-kernel's speed), each weight block read once per call. Float weights, and
  Q8_0 without VNNI, decode tiles to float32 for a float32 micro-kernel
  (kernels/gemm.py). Below 32 tokens matmul of quantized weights runs the matvec kernels per token on
  16-row tiles.
- Q2_K and Q3_K matvec dot two 32-element sub-blocks at once (64 bytes, one vpdpbusd
  on a zmm register: vec_tile.dot_planes64), 1.25x their 32-byte kernels.
- Compile cost. The jit.* dispatch takes the type as a runtime integer (the forward
  pass reads it from its weight table), so compiling it compiles every type's branch:
  about 22 s of CPU cold, 0.5 s from Numba's cache. Compiling only a model's types
  needs the type set known when the caller is compiled, and the caller (the cached
  forward pass) keys its cache on argument types only: the set would have to become
  part of its signature (e.g. per-type kernels passed in as first-class function
  objects, or one forward variant per type set), or the kernels be called through
  function pointers, which Numba cannot cache (addresses differ per process). Both
  change engine/forward.py's interface, so the dispatch stays whole.
- The SIMD path is chosen by the features Numba compiles for (kernels/cpu.py), which
  are part of Numba's cache key; kernels/numba_cache.py invalidates every kernel's
  cache when any kernel source changes.
"""

from numallm.kernels import numba_cache

numba_cache.install()  # before any kernel module defines a cached function

from numallm.kernels.formats import (
    SUPPORTED_TYPES,
    check_type,
    pack,
    packed_nbytes,
    row_group,
)
from numallm.kernels.ops import dequantize, get_rows, matmul, matvec, warmup

__all__ = [
    "SUPPORTED_TYPES", "check_type", "dequantize", "get_rows", "matmul", "matvec",
    "pack", "packed_nbytes", "row_group", "warmup",
]
