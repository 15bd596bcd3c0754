"""SIMD helpers as LLVM IR: the CPU features Numba compiles for, scalar loads, and the
8- and 16-lane float and integer vectors every family and driver builds on."""
