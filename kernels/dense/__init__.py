"""Float32/float16 vector math the forward pass calls directly: exp and SiLU (expf.py),
attention over KV-cache rows (kvrow.py)."""
