"""Architecture-level checks of a parsed GGUF file, run right after `read_gguf`.

`read_gguf` guarantees a well-formed container; this module guarantees the metadata a
decoder reads is there, has the right type and a sane value, and agrees with the
token embedding, so later code can use `int(md[key])`, divide by a head count and size
tables by the vocabulary without meeting a string, an array, a zero or a mismatch from
a hostile file. Each failure is one line naming the file and the key or tensor. Per-layer tensor shapes
and types are checked by the weight loader, which knows the decoder's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numallm.engine.arch import ARCHITECTURES
from numallm.engine.gguf_file import GGUFFile, show_name
from numallm.errors import ModelFormatError, UnsupportedError


# Upper bounds far above any real model, so a corrupt value fails here with its key
# named instead of as a huge allocation or a division by zero later.
MAX_LAYERS = 4096
MAX_EMBD = 1 << 18
MAX_FF = 1 << 22
MAX_HEADS = 4096
MAX_HEAD_DIM = 4096
MAX_CONTEXT = 1 << 24
SPECIAL_TOKEN_KEYS = ("bos", "eos", "unknown", "padding", "sep", "cls", "mask", "eot", "eom")


@dataclass(frozen=True)
class _IntKey:
    suffix: str  # after "<arch>."
    lo: int
    hi: int
    required: bool


@dataclass(frozen=True)
class _FloatKey:
    suffix: str
    lo: float  # exclusive: every float hyperparameter we read must be positive
    hi: float


_COMMON_INT_KEYS = (
    _IntKey("block_count", 1, MAX_LAYERS, True),
    _IntKey("embedding_length", 1, MAX_EMBD, True),
    _IntKey("feed_forward_length", 1, MAX_FF, True),
    _IntKey("attention.head_count", 1, MAX_HEADS, True),
    _IntKey("attention.head_count_kv", 1, MAX_HEADS, False),
    _IntKey("context_length", 1, MAX_CONTEXT, False),
    _IntKey("attention.key_length", 1, MAX_HEAD_DIM, False),
    _IntKey("attention.value_length", 1, MAX_HEAD_DIM, False),
    _IntKey("rope.dimension_count", 1, MAX_HEAD_DIM, False),
    _IntKey("vocab_size", 1, 1 << 31, False),
)
_COMMON_FLOAT_KEYS = (
    _FloatKey("attention.layer_norm_rms_epsilon", 0.0, 1.0),
    _FloatKey("rope.freq_base", 0.0, 1e12),
    _FloatKey("final_logit_softcapping", 0.0, 1e6),
)
_ARCH_INT_KEYS: dict[str, tuple[_IntKey, ...]] = {
    "llama": _COMMON_INT_KEYS,
    "gemma3": _COMMON_INT_KEYS + (_IntKey("attention.sliding_window", 1, MAX_CONTEXT, False),),
}
_ARCH_FLOAT_KEYS: dict[str, tuple[_FloatKey, ...]] = {
    "llama": _COMMON_FLOAT_KEYS,
    "gemma3": _COMMON_FLOAT_KEYS,
}


def check_architecture(gf: GGUFFile) -> None:
    """Raise a one-line ModelFormatError (UnsupportedError for an unknown architecture)
    unless the file has everything a supported decoder reads, with sane values."""
    arch = _architecture(gf)
    ints = {k.suffix: _int_key(gf, f"{arch}.{k.suffix}", k) for k in _ARCH_INT_KEYS[arch]}
    for fk in _ARCH_FLOAT_KEYS[arch]:
        _float_key(gf, f"{arch}.{fk.suffix}", fk)
    n_embd = _check_heads(gf, arch, ints)
    n_vocab = _check_vocabulary(gf, arch, n_embd)
    if ints["vocab_size"] is not None and ints["vocab_size"] != n_vocab:
        raise _error(gf, f"{arch}.vocab_size is {ints['vocab_size']} but tokenizer.ggml.tokens "
                         f"has {n_vocab} tokens")


def _error(gf: GGUFFile, what: str) -> ModelFormatError:
    return ModelFormatError(f"{gf.path}: {what}")


def _describe(value: Any) -> str:
    """What a wrongly typed metadata value is, for the error message."""
    if isinstance(value, bool):
        return f"the bool {value}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, np.ndarray)):
        return f"an array of {len(value)} elements"
    return f"the {type(value).__name__} {value!r}"


def _architecture(gf: GGUFFile) -> str:
    arch = gf.metadata.get("general.architecture")
    if arch is None:
        raise _error(gf, "required key 'general.architecture' is missing")
    if not isinstance(arch, str):
        raise _error(gf, f"key 'general.architecture' should be a string, found {_describe(arch)}")
    if arch not in ARCHITECTURES:
        raise UnsupportedError(f"{gf.path}: architecture {show_name(arch)} is not supported "
                               f"(supported: {', '.join(ARCHITECTURES)})")
    return arch


def _int_key(gf: GGUFFile, key: str, spec: _IntKey) -> int | None:
    value = gf.metadata.get(key)
    if value is None:
        if spec.required:
            raise _error(gf, f"required key {key!r} is missing")
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _error(gf, f"key {key!r} should be an integer, found {_describe(value)}")
    if not spec.lo <= value <= spec.hi:
        raise _error(gf, f"key {key!r} is {value}, outside the sane range {spec.lo}..{spec.hi}")
    return value


def _float_key(gf: GGUFFile, key: str, spec: _FloatKey) -> None:
    value = gf.metadata.get(key)
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _error(gf, f"key {key!r} should be a number, found {_describe(value)}")
    if not (math.isfinite(value) and spec.lo < value <= spec.hi):
        raise _error(gf, f"key {key!r} is {value!r}, outside the sane range ({spec.lo}, {spec.hi}]")


def _check_heads(gf: GGUFFile, arch: str, ints: dict[str, int | None]) -> int:
    """Check the attention geometry; returns the embedding length."""
    n_embd, n_head = ints["embedding_length"], ints["attention.head_count"]
    assert n_embd is not None and n_head is not None  # required keys, checked above
    n_head_kv = ints["attention.head_count_kv"] or n_head
    if n_head % n_head_kv:
        raise _error(gf, f"{arch}.attention.head_count {n_head} is not a multiple of "
                         f"{arch}.attention.head_count_kv {n_head_kv}")
    head_dim = ints["attention.key_length"]
    if head_dim is None:
        if n_embd % n_head:
            raise _error(gf, f"{arch}.embedding_length {n_embd} is not a multiple of "
                             f"{arch}.attention.head_count {n_head}")
        head_dim = n_embd // n_head
    n_rot = ints["rope.dimension_count"]
    if n_rot is not None and (n_rot > head_dim or n_rot % 2):
        raise _error(gf, f"{arch}.rope.dimension_count {n_rot} should be even and at most "
                         f"the head size {head_dim}")
    return n_embd


def _check_vocabulary(gf: GGUFFile, arch: str, n_embd: int) -> int:
    """Check the tokenizer keys and token_embd.weight; returns the vocabulary size."""
    md = gf.metadata
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise _error(gf, "required key 'tokenizer.ggml.model' is missing")
    if not isinstance(model, str) or not model:
        raise _error(gf, f"key 'tokenizer.ggml.model' should be a tokenizer name, found {_describe(model)}")
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise _error(gf, "required key 'tokenizer.ggml.tokens' is missing")
    if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], str):
        raise _error(gf, "key 'tokenizer.ggml.tokens' should be a non-empty array of strings, "
                         f"found {_describe(tokens)}")
    n_vocab = len(tokens)
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        _check_per_token_array(gf, key, n_vocab)
    merges = md.get("tokenizer.ggml.merges")
    if merges is not None and not (isinstance(merges, list) and (not merges or isinstance(merges[0], str))):
        raise _error(gf, f"key 'tokenizer.ggml.merges' should be an array of strings, found {_describe(merges)}")
    if model == "gpt2":
        # Byte-level BPE maps every byte to a printable character, so its tokens and
        # merges are always valid UTF-8; read_gguf keeps invalid bytes as surrogates,
        # which the BPE library would reject with a multi-line error of its own.
        _check_utf8(gf, "tokenizer.ggml.tokens", tokens)
        _check_utf8(gf, "tokenizer.ggml.merges", merges or [])
    for name in SPECIAL_TOKEN_KEYS:
        # An id outside the vocabulary is ignored by the tokenizer, as llama.cpp does
        # (real files have them); only a value that is no integer at all is refused.
        key = f"tokenizer.ggml.{name}_token_id"
        tid = md.get(key)
        if tid is not None and (not isinstance(tid, int) or isinstance(tid, bool)):
            raise _error(gf, f"key {key!r} should be a token id, found {_describe(tid)}")

    embd = gf.tensors.get("token_embd.weight")
    if embd is None:
        raise _error(gf, "required tensor 'token_embd.weight' is missing")
    if embd.shape != (n_embd, n_vocab):
        raise _error(gf, f"tensor 'token_embd.weight' has shape {list(embd.shape)}, expected "
                         f"[{n_embd}, {n_vocab}] ({arch}.embedding_length, and the "
                         f"{n_vocab} entries of tokenizer.ggml.tokens)")
    return n_vocab


def _check_utf8(gf: GGUFFile, key: str, strings: list[str]) -> None:
    try:
        "".join(strings).encode("utf-8")  # one pass over all, for the common case
    except UnicodeEncodeError:
        bad = next(i for i, s in enumerate(strings) if _has_surrogate(s))
        raise _error(gf, f"entry {bad} of {key!r} is not valid UTF-8, which a gpt2 "
                         f"(byte-level BPE) vocabulary never holds") from None


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_per_token_array(gf: GGUFFile, key: str, n_vocab: int) -> None:
    value = gf.metadata.get(key)
    if value is None:
        return
    if not isinstance(value, np.ndarray):
        raise _error(gf, f"key {key!r} should be a numeric array, found {_describe(value)}")
    if len(value) < n_vocab:  # longer is harmless: the tokenizer reads the first n_vocab
        raise _error(gf, f"key {key!r} has {len(value)} entries but tokenizer.ggml.tokens has {n_vocab}")

