"""GPT-2 byte-level BPE (tokenizer.ggml.model = "gpt2"), built as an HF `tokenizers` pipeline.

llama.cpp splits text with a per-`pre` list of regexes (each applied to the pieces the
previous one left, unmatched stretches kept as pieces of their own), maps each piece's bytes
to GPT-2's printable alphabet and merges by rank. The HF pipeline below does exactly that:
`Split(..., "isolated")` keeps unmatched stretches, `ByteLevel(use_regex=False)` only maps
bytes, and BPE merges lowest rank first, leftmost on ties, like llama.cpp. The regexes per
`pre` are in tokenizer_pre.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from numallm.errors import ModelFormatError, UnsupportedError
from numallm.engine.tokenizer_pre import PRE_TOKENIZERS
from numallm.engine.tokenizer_vocab import KEY, Vocab


def _byte_decoder() -> dict[int, int]:
    """GPT-2's printable stand-in character (as a code point) -> the byte it stands for."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return {cp: b for b, cp in table.items()}


_BYTE_OF = _byte_decoder()
# str.translate table turning stand-ins into latin-1 characters, i.e. into their bytes, and
# latin-1 characters that stand for nothing into one that will not encode.
_TO_LATIN1 = {cp: chr(b) for cp, b in _BYTE_OF.items()} | {c: "\uffff" for c in range(256) if c not in _BYTE_OF}

# llama.cpp's three clean-up passes (llama_vocab::impl::detokenize), as byte regexes.
_CLEAN = ((re.compile(rb" (?=[?!.,])"), b""),
          (re.compile(rb" ' "), b"'"),
          (re.compile(rb" '(?=[sm]|re|ve)"), b"'"))


class ByteLevelBPE:
    """Encodes raw text fragments (special tokens already split out) to ids."""

    def __init__(self, vocab: Vocab, md: Mapping[str, Any]) -> None:
        pre_name = md.get(KEY + "pre") or "default"
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise UnsupportedError(
                f"GPT-2 BPE pre-tokenizer {pre_name!r} is not supported "
                f"(supported {KEY}pre values: {', '.join(sorted(PRE_TOKENIZERS))})")
        merges_raw = md.get(KEY + "merges")
        if not merges_raw:
            raise ModelFormatError(f"GPT-2 BPE tokenizer without {KEY}merges; the GGUF is incomplete")
        merges = []
        for m in merges_raw:
            cut = m.find(" ", 1)  # as llama.cpp: the first space after the first character
            if cut > 0:  # llama.cpp keeps a spaceless line as an empty pair that never applies
                merges.append((m[:cut], m[cut + 1:]))
        try:
            hf = Tokenizer(models.BPE(vocab.ids, merges, ignore_merges=pre.ignore_merges))
        except Exception as exc:  # tokenizers raises a bare Exception for a merge without a token
            raise ModelFormatError(f"{KEY}merges does not fit {KEY}tokens ({exc}); the GGUF is corrupt") from exc
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), "isolated") for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._hf = hf
        self._clean_spaces = pre.clean_spaces

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    @staticmethod
    def normal_piece(text: str) -> bytes:
        """The bytes a normal token stands for."""
        try:
            return text.translate(_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:
            # A character outside GPT-2's alphabet: llama.cpp renders it as [UNK_BYTE_0x..].
            out = bytearray()
            for ch in text:
                byte = _BYTE_OF.get(ord(ch))
                if byte is None:
                    out += b"[UNK_BYTE_0x" + ch.encode().hex().encode() + text.encode() + b"]"
                else:
                    out.append(byte)
            return bytes(out)

    def clean(self, data: bytes) -> bytes:
        """llama.cpp's clean-up of spaces before punctuation and contractions, if this pre wants it."""
        if self._clean_spaces:
            for pattern, repl in _CLEAN:
                data = pattern.sub(repl, data)
        return data
