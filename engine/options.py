"""The choices of the options every entry point shares (kept import-light for the CLI)."""

NUMA_MODES = ("auto", "mirror", "distribute", "interleave", "isolate", "none")
LOAD_MODES = ("auto", "mmap", "none")
KV_TYPES = ("f16", "f32")
