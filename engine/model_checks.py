"""Architecture-level checks of a parsed GGUF file, run right after `read_gguf`.

`read_gguf` guarantees a well-formed container; this module guarantees the metadata a
decoder reads is there, has the right type and a sane value, and agrees with the
token embedding, so later code can use `int(md[key])`, divide by a head count and size
tables by the vocabulary without meeting a string, an array, a zero or a mismatch from
a hostile file. Each failure is one line naming the file and the key or tensor. The keys,
their types and sane ranges are the architecture's description (engine/arch); per-layer
tensor shapes and types are checked by the weight loader, which knows the decoder's layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gguf import Keys
from numallm.engine.arch import architecture
from numallm.engine.arch.spec import TOKEN_EMBD, Architecture, Key
from numallm.engine.gguf_file import GGUFFile
from numallm.errors import ModelFormatError, UnsupportedError

SPECIAL_TOKEN_KEYS = ("bos", "eos", "unknown", "padding", "sep", "cls", "mask", "eot", "eom")


def check_architecture(gf: GGUFFile) -> None:
    """Raise a one-line ModelFormatError (UnsupportedError for an unknown architecture)
    unless the file has everything a supported decoder reads, with sane values."""
    arch = _architecture(gf)
    _check_mla_layout(gf, arch)
    values = {key.name: _check_key(gf, arch.key_name(key), key) for key in arch.keys}
    n_embd = _check_heads(gf, arch.name, values)
    _check_mla(gf, arch.name, values)
    _check_experts(gf, arch.name, values)
    _check_routing(gf, arch.name, values)
    _check_refused(gf, arch)
    n_vocab = _check_vocabulary(gf, arch.name, n_embd)
    vocab_size = values.get(Keys.LLM.VOCAB_SIZE)
    if vocab_size is not None and vocab_size != n_vocab:
        raise _error(gf, f"{_name(Keys.LLM.VOCAB_SIZE, arch.name)} is {vocab_size} but tokenizer.ggml.tokens "
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


def _name(template: str, arch: str) -> str:
    return template.format(arch=arch)


def _architecture(gf: GGUFFile) -> Architecture:
    arch = gf.metadata.get("general.architecture")
    if arch is None:
        raise _error(gf, "required key 'general.architecture' is missing")
    if not isinstance(arch, str):
        raise _error(gf, f"key 'general.architecture' should be a string, found {_describe(arch)}")
    return architecture(arch, gf.path)


def _check_key(gf: GGUFFile, name: str, key: Key) -> int | float | None:
    """The value of metadata key `name`, checked against its description; None if absent."""
    value = gf.metadata.get(name)
    if value is None:
        if key.required:
            raise _error(gf, f"required key {name!r} is missing")
        return None
    if key.kind is bool:
        if not isinstance(value, bool):
            raise _error(gf, f"key {name!r} should be a bool, found {_describe(value)}")
        return value
    if key.kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _error(gf, f"key {name!r} should be an integer, found {_describe(value)}")
        if not key.lo <= value <= key.hi:
            raise _error(gf, f"key {name!r} is {value}, outside the sane range {key.lo}..{key.hi}")
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _error(gf, f"key {name!r} should be a number, found {_describe(value)}")
    if value == key.unset:
        return value
    if not (math.isfinite(value) and key.lo < value <= key.hi):
        raise _error(gf, f"key {name!r} is {value!r}, outside the sane range ({key.lo}, {key.hi}]")
    return value


def _check_refused(gf: GGUFFile, arch: Architecture) -> None:
    for template, variant in arch.refused_keys.items():
        name = template.format(arch=arch.name)
        value = gf.metadata.get(name)
        if value is not None and np.any(np.asarray(value) != 0):
            raise UnsupportedError(f"{gf.path}: key {name!r} is set: {variant}, which numallm does not run")


def _check_heads(gf: GGUFFile, arch: str, values: dict[str, Any]) -> int:
    """Check the attention geometry; returns the embedding length."""
    n_embd, n_head = values[Keys.LLM.EMBEDDING_LENGTH], values[Keys.Attention.HEAD_COUNT]
    n_head_kv = values.get(Keys.Attention.HEAD_COUNT_KV) or n_head
    if n_head % n_head_kv:
        raise _error(gf, f"{_name(Keys.Attention.HEAD_COUNT, arch)} {n_head} is not a multiple of "
                         f"{_name(Keys.Attention.HEAD_COUNT_KV, arch)} {n_head_kv}")
    head_dim = values.get(Keys.Attention.KEY_LENGTH)
    if head_dim is None:
        if n_embd % n_head:
            raise _error(gf, f"{_name(Keys.LLM.EMBEDDING_LENGTH, arch)} {n_embd} is not a multiple of "
                             f"{_name(Keys.Attention.HEAD_COUNT, arch)} {n_head}")
        head_dim = n_embd // n_head
    n_rot = values.get(Keys.Rope.DIMENSION_COUNT)
    if n_rot is not None and (n_rot > head_dim or n_rot % 2):
        raise _error(gf, f"{_name(Keys.Rope.DIMENSION_COUNT, arch)} {n_rot} should be even and at most "
                         f"the head size {head_dim}")
    return n_embd


def _check_mla_layout(gf: GGUFFile, arch: Architecture) -> None:
    """A multi-head latent attention file with the _mla head sizes (as llama.cpp's is_mla):
    an older one with attn_kv_b instead has them once arch.upgrade has split it."""
    if not any(key.name == Keys.Attention.KV_LORA_RANK for key in arch.keys):
        return
    for key in (Keys.Attention.KEY_LENGTH_MLA, Keys.Attention.VALUE_LENGTH_MLA):
        if _name(key, arch.name) not in gf.metadata:
            raise _error(gf, f"key {_name(key, arch.name)!r} is missing, and there is no attn_kv_b per layer to "
                             "derive it from: convert the model again with a current llama.cpp "
                             "convert_hf_to_gguf.py")


def _check_mla(gf: GGUFFile, arch: str, values: dict[str, Any]) -> None:
    """Multi-head latent attention's sizes agree: RoPE covers part of a query head (the
    rest is absorbed into the latent: llama.cpp asserts at least one such dimension), and
    the latent cache's key and value lengths are kv_lora_rank + rope and kv_lora_rank."""
    r = values.get(Keys.Attention.KV_LORA_RANK)
    if r is None:
        return
    k_mla = values[Keys.Attention.KEY_LENGTH_MLA]
    n_rot = values.get(Keys.Rope.DIMENSION_COUNT) or k_mla
    if n_rot >= k_mla or n_rot % 2:
        raise _error(gf, f"{_name(Keys.Rope.DIMENSION_COUNT, arch)} {n_rot} should be even and less than "
                         f"{_name(Keys.Attention.KEY_LENGTH_MLA, arch)} {k_mla}: the file is inconsistent")
    for key, want in ((Keys.Attention.KEY_LENGTH, r + n_rot), (Keys.Attention.VALUE_LENGTH, r)):
        got = values.get(key)
        if got is not None and got != want:
            raise _error(gf, f"{_name(key, arch)} is {got} but the latent cache's is {want} "
                             f"({_name(Keys.Attention.KV_LORA_RANK, arch)} {r}"
                             + (f" + {_name(Keys.Rope.DIMENSION_COUNT, arch)} {n_rot}" if want != r else "")
                             + "): the file is inconsistent")


def _check_experts(gf: GGUFFile, arch: str, values: dict[str, Any]) -> None:
    """expert_used_count within 1..expert_count when there are experts (llama.cpp asserts it)."""
    count, used = values.get(Keys.LLM.EXPERT_COUNT) or 0, values.get(Keys.LLM.EXPERT_USED_COUNT) or 0
    if used > count or (count > 0 and used == 0):
        raise _error(gf, f"key {_name(Keys.LLM.EXPERT_USED_COUNT, arch)!r} is {used}, expected 1..{count} "
                         f"(key {_name(Keys.LLM.EXPERT_COUNT, arch)!r}): the file is inconsistent")


def _check_routing(gf: GGUFFile, arch: str, values: dict[str, Any]) -> None:
    """Expert groups that split the experts and leave enough of them to choose from, and
    layer counts that leave a trunk (llama.cpp asserts most of these; the rest would
    choose experts outside the kept groups or run no layer)."""
    count, used = values.get(Keys.LLM.EXPERT_COUNT) or 0, values.get(Keys.LLM.EXPERT_USED_COUNT) or 0
    groups, kept = values.get(Keys.LLM.EXPERT_GROUP_COUNT) or 0, values.get(Keys.LLM.EXPERT_GROUP_USED_COUNT) or 0
    n_groups, n_kept = (repr(_name(k, arch)) for k in (Keys.LLM.EXPERT_GROUP_COUNT, Keys.LLM.EXPERT_GROUP_USED_COUNT))
    if groups > 1:
        if count % groups or count // groups < 2:
            raise _error(gf, f"key {n_groups} is {groups}, which does not split the {count} experts (key "
                             f"{_name(Keys.LLM.EXPERT_COUNT, arch)!r}) into groups of 2 or more: the file is "
                             "inconsistent")
        if not 0 < kept < groups:
            raise _error(gf, f"key {n_kept} is {kept}, expected 1..{groups - 1} (key {n_groups} is {groups}): "
                             "the file is inconsistent")
        if used > kept * (count // groups):
            raise _error(gf, f"key {_name(Keys.LLM.EXPERT_USED_COUNT, arch)!r} is {used}, more than the "
                             f"{kept * (count // groups)} experts of the {kept} groups kept (key {n_kept}): "
                             "the file is inconsistent")
    n_layer = values[Keys.LLM.BLOCK_COUNT] - (values.get(Keys.LLM.NEXTN_PREDICT_LAYERS) or 0)
    if n_layer < 1:
        raise _error(gf, f"key {_name(Keys.LLM.NEXTN_PREDICT_LAYERS, arch)!r} is "
                         f"{values[Keys.LLM.NEXTN_PREDICT_LAYERS]}, which leaves none of the "
                         f"{values[Keys.LLM.BLOCK_COUNT]} layers (key {_name(Keys.LLM.BLOCK_COUNT, arch)!r}) to run")
    dense = values.get(Keys.LLM.LEADING_DENSE_BLOCK_COUNT) or 0
    if dense > n_layer:
        raise _error(gf, f"key {_name(Keys.LLM.LEADING_DENSE_BLOCK_COUNT, arch)!r} is {dense}, more than the "
                         f"{n_layer} layers: the file is inconsistent")


def _check_vocabulary(gf: GGUFFile, arch: str, n_embd: int) -> int:
    """Check the tokenizer keys and the token embedding; returns the vocabulary size."""
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

    embd = gf.tensors.get(TOKEN_EMBD)
    if embd is None:
        raise _error(gf, f"required tensor {TOKEN_EMBD!r} is missing")
    if embd.shape != (n_embd, n_vocab):
        raise _error(gf, f"tensor {TOKEN_EMBD!r} has shape {list(embd.shape)}, expected "
                         f"[{n_embd}, {n_vocab}] ({_name(Keys.LLM.EMBEDDING_LENGTH, arch)}, and the "
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

