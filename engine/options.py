"""The values the Engine's load options take (kept import-light: the CLI lists them in --help)."""

from __future__ import annotations

from numallm.numa.modes import NUMA_MODES

__all__ = ["KV_TYPES", "LOAD_MODES", "NUMA_MODES", "POOLINGS"]

LOAD_MODES = ("auto", "mmap", "mlock", "dio", "none")
KV_TYPES = ("f16", "f32")
POOLINGS = ("none", "mean", "cls", "last")  # of embeddings: llama.cpp's --pooling, less rank
