"""Architectures: each module maps one `general.architecture` onto the generic decoder.

Adding an architecture means adding one module here that defines `describe(md)`
returning an ArchSpec, and listing it in ARCHITECTURES.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from numallm.engine.arch import gemma3, llama
from numallm.engine.arch.spec import ArchSpec
from numallm.errors import UnsupportedError

ARCHITECTURES = {"llama": llama.describe, "gemma3": gemma3.describe}


def describe(md: Mapping[str, Any], path: str) -> ArchSpec:
    """The ArchSpec of a GGUF file's architecture, or UnsupportedError."""
    arch = str(md.get("general.architecture", ""))
    if arch not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        raise UnsupportedError(f"{path}: architecture {arch!r} is not supported (supported: {supported})")
    return ARCHITECTURES[arch](md, path)
