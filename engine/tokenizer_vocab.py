"""The vocabulary half of a GGUF tokenizer: token texts, their attributes and the special ids.

This mirrors how llama.cpp's `llama_vocab::impl::load` reads `tokenizer.ggml.*`: token types
become attribute flags, missing special ids fall back to the per-model defaults, and
end-of-generation tokens are recognised by their text (llama.cpp does the same, for want of
a GGUF key listing them), which also promotes such tokens to control tokens.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from numallm.errors import ModelFormatError

KEY = "tokenizer.ggml."


class Attr(enum.IntFlag):
    """llama.cpp's llama_token_attr bits (only those our tokenizers look at)."""

    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# GGUF tokenizer.ggml.token_type values (llama_token_type) -> attribute.
_TYPE_TO_ATTR = {
    1: Attr.NORMAL, 2: Attr.UNKNOWN, 3: Attr.CONTROL,
    4: Attr.USER_DEFINED, 5: Attr.UNUSED, 6: Attr.BYTE,
}

# Texts llama.cpp treats as end of generation (llama-vocab.cpp, special_eog_ids). Note
# "</s>": in Gemma 3 it is the HTML strikethrough end tag, but llama.cpp stops on it (and
# treats it as a control token) all the same, so we do too.
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})
# llama.cpp's exceptions: with both of the first texts present the third is no end of
# generation and becomes a plain (user-defined or normal) token again.
_EOG_EXCEPTIONS = ((("<|return|>", "<|call|>"), "<|end|>", Attr.USER_DEFINED),
                   (("<|calls|>", "<|flush|>"), "<|end|>", Attr.USER_DEFINED),
                   (("<|tool_response>",), "</s>", Attr.NORMAL))
# Fill-in-the-middle tokens llama.cpp detects by text when the GGUF gives no id; the
# pad/repo/separator ones also end generation.
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_FIM = ("fim_pad", "fim_rep", "fim_sep")


def _array(md: Mapping[str, Any], name: str, dtype: type, n: int) -> np.ndarray | None:
    """A numeric tokenizer array of at least n entries, or None when the key is absent."""
    value = md.get(KEY + name)
    if value is None:
        return None
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1 or len(arr) < n:
        raise ModelFormatError(f"{KEY}{name} has {arr.size} entries for {n} tokens; the GGUF is corrupt")
    return arr[:n]


def _token_id(md: Mapping[str, Any], name: str, default: int | None, n: int) -> int | None:
    """A special token id from the GGUF, else llama.cpp's default; out-of-range ids are ignored."""
    value = md.get(f"{KEY}{name}_token_id")
    if value is not None and 0 <= int(value) < n:
        return int(value)
    return default if default is not None and 0 <= default < n else None


@dataclass(frozen=True)
class Vocab:
    """Token texts, attributes and special ids of one GGUF vocabulary."""

    texts: Sequence[str]
    ids: dict[str, int]
    attrs: np.ndarray            # Attr bits per token, int32
    scores: np.ndarray | None    # float32 per token (SentencePiece vocabularies)
    bos_id: int | None
    eos_id: int | None
    eog_ids: frozenset[int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool

    @property
    def n_vocab(self) -> int:
        return len(self.texts)

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], *, spm: bool, add_bos_default: bool) -> Vocab:
        texts = md.get(KEY + "tokens")
        if not texts:
            raise ModelFormatError(f"the GGUF has no {KEY}tokens list; it carries no tokenizer")
        n = len(texts)
        ids = dict(zip(texts, range(n)))
        if len(ids) != n:
            raise ModelFormatError(f"{KEY}tokens has duplicate entries; the GGUF is corrupt")

        types = _array(md, "token_type", np.int32, n)
        if types is None:
            attrs = np.full(n, int(Attr.NORMAL), dtype=np.int32)
        else:
            lut = np.zeros(8, dtype=np.int32)  # types 0 and 7 (and any clipped to them) are undefined
            for t, a in _TYPE_TO_ATTR.items():
                lut[t] = int(a)
            attrs = lut[np.clip(types, 0, 7)]

        # llama.cpp's defaults when the GGUF names no id: SentencePiece 1/2, GPT-2 BPE 11/11.
        bos_id = _token_id(md, "bos", 1 if spm else 11, n)
        eos_id = _token_id(md, "eos", 2 if spm else 11, n)
        eot_id = _token_id(md, "eot", None, n)
        eom_id = _token_id(md, "eom", None, n)

        eog = {ids[t] for t in EOG_TEXTS if t in ids}
        promoted = set(eog)
        for name, candidates in _FIM_TEXTS.items():
            fim_id = _token_id(md, name, None, n)
            if fim_id is None:
                # llama.cpp takes whichever match its hash map yields first; we take the lowest id.
                found = [ids[t] for t in candidates if t in ids]
                fim_id = min(found) if found else None
                if fim_id is not None:
                    promoted.add(fim_id)
            if fim_id is not None and name in _EOG_FIM:
                eog.add(fim_id)
        for special in (eos_id, eot_id, eom_id):
            if special is not None:
                eog.add(special)
        if promoted:
            sel = np.fromiter(promoted, dtype=np.int64)
            attrs[sel] |= int(Attr.CONTROL)
        for needed, text, attr in _EOG_EXCEPTIONS:
            if text in ids and all(t in ids for t in needed):
                eog.discard(ids[text])
                attrs[ids[text]] = int(attr)

        add_bos = bool(md.get(KEY + "add_bos_token", add_bos_default))
        add_eos = bool(md.get(KEY + "add_eos_token", False))
        for flag, tid, what in ((add_bos, bos_id, "bos"), (add_eos, eos_id, "eos")):
            if flag and tid is None:
                raise ModelFormatError(f"{KEY}add_{what}_token is true but the GGUF has no valid "
                                       f"{KEY}{what}_token_id; the tokenizer metadata is inconsistent")
        return cls(
            texts=texts, ids=ids, attrs=attrs,
            scores=_array(md, "scores", np.float32, n),
            bos_id=bos_id, eos_id=eos_id, eog_ids=frozenset(eog),
            add_bos=add_bos, add_eos=add_eos,
            add_space_prefix=bool(md.get(KEY + "add_space_prefix", spm)),
        )

    def special_tokens(self) -> list[int]:
        """Ids split out of text before tokenizing: control, user-defined and unknown tokens,
        longest text first (llama.cpp's cache_special_tokens; ties by id, where its sort is unstable)."""
        mask = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)
        found = np.flatnonzero(self.attrs & mask).tolist()
        return sorted(found, key=lambda i: (-len(self.texts[i]), i))
