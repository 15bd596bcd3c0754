"""Q2_K-Q6_K: super-blocks of 256 in the file's layout; row dots, unpackers and decoders
in rows.py, the super-block dot as LLVM IR in simd.py."""
