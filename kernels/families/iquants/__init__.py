"""The i-quants (IQ1_S-IQ4_XS), TQ1_0, TQ2_0 and MXFP4: codebook and ternary formats whose
values are small integers times a factor per 16 or more elements. Tables from gguf-py
in tables.py, block decoders and the GEMM's unpacked form in blocks.py, row dots in
rows.py (TQ1_0, TQ2_0: ternary.py; IQ4_XS's tiles: tiles.py, IQ4_NL's and MXFP4's are
Q4_0's: q4_q8/tiles.py), their LLVM IR in simd.py and, for the grid types with AVX-512
VBMI, grids.py."""
