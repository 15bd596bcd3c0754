"""The NUMA placement modes (kept import-light: the CLI lists them in --help)."""

NUMA_MODES = ("auto", "mirror", "distribute", "interleave", "isolate", "none")
