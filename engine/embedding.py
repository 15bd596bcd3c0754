"""Embeddings as llama.cpp makes them: the final hidden state (after output_norm) of
every token, pooled into one vector per input, then scaled to unit length (llama-server's
/v1/embeddings normalises with the Euclidean norm).

The pooling is the GGUF's `{arch}.pooling_type` unless the caller names one (llama.cpp's
--pooling); a model without the key has none, and then there is no single vector: as
llama-server does, embedding it needs an explicit pooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gguf import Keys, PoolingType

from numallm.engine.options import POOLINGS
from numallm.errors import BadInputError

# RANK is left out: it needs a classifier head that these models lack.
_KINDS = {PoolingType.NONE: "none", PoolingType.MEAN: "mean", PoolingType.CLS: "cls", PoolingType.LAST: "last"}
NO_POOLING = ("this model has no pooling type (its GGUF names none), so an input has no single "
              "embedding; choose one: --pooling mean, cls or last")


def model_pooling(md: Mapping[str, Any]) -> str:
    """The pooling the GGUF asks for, "none" when it names none (as llama.cpp)."""
    value = md.get(Keys.LLM.POOLING_TYPE.format(arch=md.get("general.architecture", "")))
    return _KINDS.get(value, "none") if isinstance(value, int) else "none"


def check_pooling(name: str) -> str:
    """`name` if it is a pooling that gives one vector, else BadInputError."""
    if name == "none":
        raise BadInputError(NO_POOLING)
    if name not in POOLINGS:
        raise BadInputError(f"pooling {name!r} is not supported (use one of {', '.join(POOLINGS[1:])})")
    return name


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """One unit-length vector from the hidden states [n_tokens, n_embd] of one input."""
    check_pooling(pooling)
    if pooling == "mean":
        v = hidden.astype(np.float64).mean(axis=0)
    elif pooling == "cls":  # the first token's, as llama.cpp (whatever attention the model has)
        v = hidden[0].astype(np.float64)
    else:
        v = hidden[-1].astype(np.float64)
    norm = np.linalg.norm(v)
    return (v / norm if norm > 0 else v).astype(np.float32)
