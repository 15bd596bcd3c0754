"""Arithmetic on quantized GGUF blocks. Knows nothing about models or NUMA.

engine/, bench/ and benchmarks/ use only the names exported here (tests may reach
inside). `qtype` is a gguf.GGMLQuantizationType (or its int code) throughout.

Load time: SUPPORTED_TYPES, check_type, in_file_layout, row_group, packed_nbytes,
pack (kernels/formats.py). Run time from Python: matvec, matmul, get_rows,
dequantize, warmup (kernels/ops.py); kernels_for(qcode) gives one type's compiled
entry points. From Numba code (a whole token per pinned worker): kernel_set(qtypes)
and matvec_in / matmul_in / get_rows_in(ks, qcode, ...) (kernels/jit.py), which
compile only the set's types, and the float vector math exp_shifted, silu_mul,
rows_dot, rows_axpy (kernels/dense/). Questions: batch_invariant(qtypes), whether
a token gets the same bits in a batch of any size; same_path(n, total), whether n
tokens take the same kernels inside a call of total tokens as alone. Benchmarks:
memory_read_bandwidth, run_pinned, simd_path.

Layout of this package (docs/adding-a-type.md walks through adding a type):
- traits.py: one record per GGML type (block geometry, layout, entry points, batch
  invariance); every per-type dispatch table is generated from these records.
- families/: one module (or package) per family of formats: floats.py, q4_q8/
  (grouped and tiled layouts), kquants/ (row kernels and tiles), iquants/ (IQ1_S-IQ4_XS, TQ1_0, TQ2_0, MXFP4).
- drivers/: the loops over rows (rows.py), tiles of rows for the int8 and float32
  GEMMs (gemm_int8.py, gemm_float.py), decoding (decode.py), activation quantization
  (actq.py), and the literal dispatch on the type code (by_type.py).
- simd/: CPU features and LLVM IR vector helpers; dense/: float32 vector math.
- jit.py, ops.py, formats.py: the entry points above.

Design (issue 5):
- Layout. Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4 and TQ2_0 rows
  are interleaved at load by tiles of 16 rows; a matrix's last rows % 16 of Q4_0,
  Q4_1 and Q8_0, and Q5_0 and Q5_1 rows, are regrouped into groups of 8 blocks, whose
  scales convert and scale 8 at a time; Q2_K, Q3_K, the other i-quants, TQ1_0, the
  float types and the other tiled types' last rows % 16 are read as the file stores
  them (zero-copy pack). Rows keep their size and place
  by tiles, so packed_nbytes is the file's and row_group is where a shard may start.
  pack runs compiled, in place or into another buffer, without the GIL (the loader's
  reading threads pack what they read).
- Tiled types. One kernel per family (families/q4_q8/tiles.py, families/kquants/tiles.py,
  families/iquants/tiles.py and ternary.py) multiplies a tile by 8, 4, 2 or 1 tokens
  at a time, each token in its own accumulators: any batch, decode or prefill, gives
  each token the bits it gets alone.
- matvec quantizes x to int8 blocks of 32 (llama.cpp's q8_0/q8_1, drivers/actq.py)
  and runs integer dot products as LLVM vector IR (vpdpbusd with VNNI,
  vpmaddubsw/vpmaddwd with AVX2, plain LLVM vectors elsewhere). Its error is that of
  quantizing x: relative L2 about 5e-3 against float64, bounded per row in
  tests/test_kernels.py. F32/F16/BF16 keep x in float32. Q4_K, Q5_K, Q6_K, TQ1_0,
  TQ2_0 and the i-quants but IQ4_NL get q8_K, a scale per 256, as llama.cpp pairs
  them (its vec_dot_type; Q2_K and Q3_K, which it pairs so too, keep q8_0 here).
- i-quants, TQ, MXFP4 (families/iquants/): read in file layout; the row dots gather
  grid rows into vectors and put the signs on the activation (IQ1-IQ3), look nibbles
  up by vpshufb (IQ4_NL, IQ4_XS, MXFP4), or expand ternary digits in vectors (TQ);
  grids and tables come from gguf-py.
- matmul of jit.GEMM_MIN_TOKENS or more tokens of the other quantized types quantizes
  them to int8 once and unpacks tiles of 16 rows to unsigned byte quants with a scale
  and offset per sub-block, then multiplies each tile vector with 8 tokens at a time
  by vpdpbusd, each weight block read once per call. Float weights decode tiles to
  float32 for a float32 micro-kernel. Below the threshold matmul runs the row dots
  per token on tiles of 64 rows.
- Compile cost. jit.matvec & co. take the type as a runtime integer and compile every
  type's kernels; kernel_set and the *_in entry points (and kernels_for) carry the
  type code as a Numba literal, so a caller compiles only its types' kernels.
- The SIMD path is chosen by the features Numba compiles for (simd/cpu.py), which
  are part of Numba's cache key; numba_cache.py invalidates every kernel's cache when
  any kernel source changes, and keeps scipy out of Numba's start-up.
Measured speeds and compile times: benchmarks/README.md.
"""

from numallm.kernels import numba_cache

numba_cache.install()  # before any kernel module defines a cached function

from numallm.kernels.bandwidth import memory_read_bandwidth, run_pinned
from numallm.kernels.dense.expf import exp_shifted, silu_mul
from numallm.kernels.dense.kvrow import kv_put, rows_axpy, rows_axpy_x4, rows_dot, rows_dot_x4
from numallm.kernels.formats import (
    SUPPORTED_TYPES,
    check_type,
    in_file_layout,
    pack,
    packed_nbytes,
    row_group,
)
from numallm.kernels.jit import (
    KernelSet,
    TypeKernels,
    get_rows_in,
    kernel_set,
    kernels_for,
    matmul_in,
    matvec_in,
    same_path,
)
from numallm.kernels.ops import dequantize, get_rows, matmul, matvec, warmup
from numallm.kernels.simd.cpu import simd_path
from numallm.kernels.traits import batch_invariant

__all__ = [
    "SUPPORTED_TYPES", "KernelSet", "TypeKernels", "batch_invariant", "check_type", "dequantize", "exp_shifted",
    "get_rows", "get_rows_in", "in_file_layout", "kernel_set", "kernels_for", "kv_put", "matmul", "matmul_in", "matvec",
    "matvec_in", "memory_read_bandwidth", "pack", "packed_nbytes", "row_group", "rows_axpy", "rows_axpy_x4", "rows_dot",
    "rows_dot_x4", "run_pinned", "same_path", "silu_mul", "simd_path", "warmup",
]
