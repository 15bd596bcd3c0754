"""numallm: a NUMA-aware CPU inference engine for GGUF language models.

    >>> from numallm import engine
    >>> engine.generate("Once upon a time")

Layout: numallm.numa knows the machine, numallm.kernels knows quantized arithmetic,
numallm.engine knows models and asks numa where to put things.
"""

from numallm.errors import BadInputError, ModelFormatError, NumallmError

__version__ = "0.1.0"
__all__ = ["BadInputError", "ModelFormatError", "NumallmError", "__version__"]
