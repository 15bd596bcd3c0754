"""Which SIMD instructions the kernels may emit: the features Numba compiles for.

We read the features from Numba's own code generator, not /proc/cpuinfo, so that
NUMBA_CPU_NAME / NUMBA_CPU_FEATURES (used to build portable caches, and by our tests
to exercise the AVX2-only and generic paths on an AVX-512 machine) are obeyed, and so
that Numba's cache, which is keyed by these same features, never mixes the paths.
"""

from __future__ import annotations

from functools import cache


@cache
def target_features() -> frozenset[str]:
    """LLVM feature names ("avx2", "avx512vnni", ...) enabled for Numba's CPU target."""
    from numba.core.registry import cpu_target

    feats = cpu_target.target_context.codegen()._tm_features or ""
    return frozenset(f[1:] for f in feats.split(",") if f.startswith("+"))


def has_avx2() -> bool:
    """AVX2 integer ops (vpmaddubsw, vpsignb): the x86 baseline path."""
    return "avx2" in target_features()


def has_avx512() -> bool:
    """32 zmm registers and 16-lane float ops."""
    return "avx512f" in target_features()


def has_vnni256() -> bool:
    """vpdpbusd on ymm registers: AVX512-VNNI with AVX512-VL, or AVX-VNNI (Zen 5, Alder Lake)."""
    f = target_features()
    return "avxvnni" in f or {"avx512vnni", "avx512vl"} <= f


def simd_path() -> str:
    """Name of the integer dot-product path the kernels compile to, for reports."""
    if has_vnni256():
        return "vnni"
    if has_avx2():
        return "avx2"
    return "generic"
