"""Loops over rows, tiles and tokens that call a type's entry points through the
dispatch tables generated from kernels/traits.py: row dots (rows.py), the int8 and
float32 GEMMs, decoding (get_rows), activation quantization (actq.py)."""
