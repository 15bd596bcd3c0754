"""Byte sizes as people write them on a command line (llama.cpp's style: 200G, 512M)."""

from __future__ import annotations

import re

from numallm.errors import BadInputError

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str, flag: str) -> int:
    """Bytes of `text`: a number with an optional K, M, G or T suffix (powers of 1024, as
    llama.cpp counts memory; a trailing B or iB is allowed); BadInputError naming `flag`."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise BadInputError(f"{flag} {text!r} is not a size: give a number of bytes with K, M, G or T "
                            "(powers of 1024), e.g. 200G or 512M")
    return int(float(m.group(1)) * (1 << _SHIFT[m.group(2).upper()]))


def format_size(nbytes: int) -> str:
    """A size parse_size reads back as at least `nbytes`: whole MiB, or GiB when exact."""
    mib = -(-nbytes // (1 << 20))
    return f"{mib >> 10}G" if mib and mib % 1024 == 0 else f"{mib}M"
