"""Models: GGUF files, tokenizers, forward passes, sampling and generation.

    >>> from numallm import engine
    >>> engine.generate("Once upon a time")          # the default model, fetched once
    >>> with engine.Engine("model.gguf") as e:
    ...     print(e.generate("Hello", max_tokens=32, temperature=0))
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from numallm.engine.engine import Engine, Stats

__all__ = ["Engine", "Stats", "generate"]

_default: Engine | None = None
_default_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    # Imported on first use: reading a GGUF header or printing an error should not
    # pay for importing Numba and compiling kernels.
    if name in ("Engine", "Stats"):
        from numallm.engine import engine as _engine_module

        return getattr(_engine_module, name)
    raise AttributeError(f"module 'numallm.engine' has no attribute {name!r}")


def generate(prompt: str, **kwargs: Any) -> str | Iterator[str]:
    """Generate with the default model (loaded on first use and kept for later calls)."""
    global _default
    from numallm.engine.engine import Engine

    with _default_lock:
        if _default is None:
            _default = Engine()
    return _default.generate(prompt, **kwargs)
