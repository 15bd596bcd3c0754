"""Arithmetic on quantized GGUF blocks. Knows nothing about models or NUMA.

Python interface (all `qtype` are gguf.GGMLQuantizationType):
    SUPPORTED_TYPES, check_type, row_group, packed_nbytes, in_file_layout, pack   (load time)
    matvec, matmul, get_rows, dequantize, warmup                  (run time)
    bandwidth.memory_read_bandwidth, bandwidth.run_pinned         (benchmarks)

Numba interface: numallm.kernels.jit.{matvec, matmul, get_rows}(qcode, w, rows, cols,
...) take the integer type code `int(qtype)` and otherwise the arguments of the
Python functions; call them from your own @njit(nogil=True) code (a whole token
per pinned worker). They dispatch on qcode inside the compiled code, check shapes
and the row range once per call (ValueError) and allocate only the int8 copy of x.

Design (issue 5):
- Layout. Q4_0, Q4_1 and Q8_0 rows are interleaved at load by tiles of 16 rows
  (kernels/tiled.py: per block, the 16 rows' scales, then 64-byte vectors holding 4
  quants of each row); a matrix's last rows % 16, and Q5_0 and Q5_1 rows, are
  regrouped into groups of 8 blocks (kernels/repack.py), which made their kernels
  1.5-3x faster than on the file layout; the K-quants and float types are read as the
  file stores them (zero-copy pack). Rows keep their size and place by tiles, so
  packed_nbytes is the file's and row_group (16 for the tiled types, else 1) is where
  a shard may start. pack runs compiled, in place or into another buffer, at 10-18
  GB/s per core from cache, without the GIL (the loader's reading threads pack what
  they read).
- Tiled types. One kernel (kernels/tiled.py) multiplies a tile by 8, 4, 2 or 1
  tokens at a time with vpdpbusd on zmm registers, each token in its own
  accumulators: any batch, decode or prefill, gives each token the bits it gets
  alone. On SmolLM2 a decode step of 8 sequences costs 2.6x one sequence's, against
  4.4x with the row kernels.
- matvec quantizes x to int8 blocks of 32 (llama.cpp's q8_0/q8_1, kernels/actq.py)
  and runs integer dot products as LLVM vector IR (kernels/vec.py: vpdpbusd with
  VNNI, vpmaddubsw/vpmaddwd with AVX2, plain LLVM vectors elsewhere). Its error is
  that of quantizing x: relative L2 about 5e-3 against float64, bounded per row in
  tests/test_kernels.py. F32/F16/BF16 keep x in float32 (kernels/floatdot.py).
- matmul of 32 or more tokens (jit.GEMM_MIN_TOKENS) of the other quantized types
  quantizes them to int8 once and unpacks tiles of 16 rows to unsigned byte quants
  with a scale and offset per sub-block (kernels/unpack.py), then multiplies each
  tile vector with 8 tokens at a time by vpdpbusd on zmm registers
  (kernels/igemm.py, vec_tile.py; twice the float32 micro-kernel's speed), each
  weight block read once per call. Float weights decode tiles to float32 for a
  float32 micro-kernel (kernels/gemm.py). Below 32 tokens matmul of these types runs
  the matvec kernels per token on tiles of 64 rows.
- K-quant matvec (Q2_K-Q6_K) runs one vec_kquant.kquant_dot per 256-element super-block:
  four 64-element vpdpbusd dots (zmm), each int32 lane converted once and scaled by its
  sub-block's factor d * scale * xd, decoded for the whole super-block with vector ops;
  1.4-1.7x the per-sub-block kernels (benchmarks/README.md).
- Compile cost. jit.matvec & co. take the type as a runtime integer and compile every
  type's kernels (about 30 s of CPU cold). A caller that passes jit.kernel_set(qtypes)
  and calls jit.matvec_in / matmul_in / get_rows_in compiles only those types
  (kernels/by_type.py: the type code travels as a Numba literal and every dispatch
  selects on it while typing), cached per set; jit.kernels_for(qcode) does it for
  Python callers. The forward pass does this: SmolLM2's Engine compiles in 16.5 s of
  CPU cold instead of 29 s and loads in 0.4 s warm instead of 1.8 s.
- The SIMD path is chosen by the features Numba compiles for (kernels/cpu.py), which
  are part of Numba's cache key; kernels/numba_cache.py invalidates every kernel's
  cache when any kernel source changes, and keeps scipy out of Numba's start-up
  (0.2 s of CPU at every load otherwise).
"""

from numallm.kernels import numba_cache

numba_cache.install()  # before any kernel module defines a cached function

from numallm.kernels.formats import (
    SUPPORTED_TYPES,
    check_type,
    in_file_layout,
    pack,
    packed_nbytes,
    row_group,
)
from numallm.kernels.ops import dequantize, get_rows, matmul, matvec, warmup

__all__ = [
    "SUPPORTED_TYPES", "check_type", "dequantize", "get_rows", "in_file_layout", "matmul", "matvec",
    "pack", "packed_nbytes", "row_group", "warmup",
]
