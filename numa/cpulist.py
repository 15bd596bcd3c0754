"""Kernel CPU-set notations: list syntax ("0-3,8,10-11") and hex masks ("ff,00000f00").

Parsers raise ValueError on malformed text; callers turn that into a TopologyError that
names the file it came from.
"""

from collections.abc import Iterable


def parse_cpulist(text: str) -> frozenset[int]:
    """'0-3,8,10-11' -> {0, 1, 2, 3, 8, 10, 11}; '' -> empty set."""
    out: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        lo = _nonnegative(first)
        hi = _nonnegative(last) if sep else lo
        if hi < lo:
            raise ValueError(f"descending range {part!r}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_cpumask(text: str) -> frozenset[int]:
    """Hex mask '00000000,0000ff00' (32-bit words, most significant first) -> {8..15}."""
    digits = text.replace(",", "").strip()
    if digits.startswith(("0x", "0X")):
        digits = digits[2:]
    if not digits:
        return frozenset()
    try:
        value = int(digits, 16)
    except ValueError:
        raise ValueError(f"not a hex mask: {text.strip()!r}") from None
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def format_cpulist(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 3, 8} -> '0-3,8' (the kernel's list syntax; '' for an empty set)."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def _nonnegative(token: str) -> int:
    token = token.strip()
    if not token.isdigit():
        raise ValueError(f"not a CPU number: {token!r}")
    return int(token)
