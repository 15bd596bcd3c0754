"""Architectures: each module describes one `general.architecture` for the generic decoder.

Adding an architecture means adding one module here that defines `ARCH`, an
Architecture (engine/arch/spec.py), and listing it in ARCHITECTURES
(docs/adding-a-model.md has the whole checklist).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from numallm.engine.arch import deepseek2, gemma3, glm4moe, llama, qwen2, qwen3, qwen3moe
from numallm.engine.arch.spec import Architecture, ArchSpec
from numallm.engine.gguf_file import GGUFFile, show_name
from numallm.errors import UnsupportedError

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (llama.ARCH, gemma3.ARCH, qwen2.ARCH, qwen3.ARCH,
                                                              qwen3moe.ARCH, glm4moe.ARCH, deepseek2.ARCH)}


def architecture(name: str, path: str) -> Architecture:
    """The description of architecture `name`, or UnsupportedError naming the supported ones."""
    if name not in ARCHITECTURES:
        raise UnsupportedError(f"{path}: architecture {show_name(name)} is not supported "
                               f"(supported: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def upgrade(gf: GGUFFile) -> GGUFFile:
    """The file as numallm runs it: an older layout of its architecture converted at load
    (Architecture.upgrade: deepseek2's attn_kv_b split), else the file itself."""
    a = ARCHITECTURES.get(gf.architecture)
    return a.upgrade(gf) if a is not None and a.upgrade is not None else gf


def describe(md: Mapping[str, Any], path: str) -> ArchSpec:
    """The ArchSpec of a GGUF file's metadata, or UnsupportedError."""
    return architecture(str(md.get("general.architecture", "")), path).describe(md, path)
