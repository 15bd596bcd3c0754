"""Arithmetic on quantized GGUF blocks. Knows nothing about models or NUMA.

Python interface (all `qtype` are gguf.GGMLQuantizationType):
    SUPPORTED_TYPES, check_type, row_group, packed_nbytes, pack   (load time)
    matvec, matmul, get_rows, dequantize, warmup                  (run time)
    bandwidth.memory_read_bandwidth                               (benchmarks)

Numba interface: numallm.kernels.jit.{matvec, matmul, get_rows}(qcode, ...) take the
integer type code and are callable from any @njit(nogil=True) function.
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
