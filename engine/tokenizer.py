"""Tokenizer and detokenizer built from a GGUF file's own vocabulary (tokenizer.ggml.*).

Behaviour follows llama.cpp (`llama_tokenize(add_special, parse_special)` and
`llama_detokenize(remove_special=false, unparse_special=special)`), so the same text gives
the same ids:

* special tokens (control, user-defined, unknown) are cut out of the text first, longest
  text first; with parse_special=False only user-defined ones are;
* the remaining fragments go to the model's tokenizer: GPT-2 byte-level BPE with the file's
  pre-tokenizer (tokenizer_bpe) or SentencePiece merge-by-score (tokenizer_spm);
* add_special adds BOS/EOS exactly as tokenizer.ggml.add_bos_token/add_eos_token say;
* detokenizing renders control tokens only with special=True, byte tokens as raw bytes.

    >>> tok = Tokenizer.from_metadata(read_gguf(path).metadata)
    >>> tok.detokenize(tok.tokenize("Hello"), special=True)
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from numallm.errors import BadInputError, ModelFormatError, UnsupportedError
from numallm.engine.gc_pause import gc_paused
from numallm.engine.tokenizer_bpe import ByteLevelBPE
from numallm.engine.tokenizer_pre import default_add_bos
from numallm.engine.tokenizer_spm import SentencePieceBPE
from numallm.engine.tokenizer_vocab import KEY, Attr, Vocab

SUPPORTED_MODELS = ("gpt2", "llama")
_HIDDEN = int(Attr.CONTROL | Attr.UNKNOWN)  # rendered only with special=True
_VERBATIM = int(Attr.CONTROL | Attr.UNKNOWN | Attr.USER_DEFINED)


class _FragmentEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def normal_piece(self, text: str) -> bytes: ...
    def clean(self, data: bytes) -> bytes: ...


class _SpecialSplitter:
    """Cuts special-token texts out of a string the way llama.cpp's tokenizer_st_partition does:
    one token at a time, longest first, each occurrence left to right."""

    def __init__(self, vocab: Vocab, ids: list[int]) -> None:
        self._texts = vocab.texts
        self._rank = {tid: r for r, tid in enumerate(ids)}
        self._parsed_always = {tid for tid in ids if not int(vocab.attrs[tid]) & _HIDDEN}
        # Grouped by a short prefix so a text is searched once per prefix, not once per token
        # (Gemma has 6000 "<unusedN>" tokens sharing one).
        self._groups: dict[str, list[int]] = {}
        for tid in ids:
            self._groups.setdefault(vocab.texts[tid][:3], []).append(tid)

    def split(self, text: str, parse_special: bool) -> list[str | int]:
        found = [tid for prefix, group in self._groups.items() if prefix in text
                 for tid in group if self._texts[tid] in text]
        if not parse_special:
            found = [tid for tid in found if tid in self._parsed_always]
        found.sort(key=self._rank.__getitem__)
        parts: list[str | int] = [text]
        for tid in found:
            needle = self._texts[tid]
            split: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or needle not in part:
                    split.append(part)
                    continue
                for k, piece in enumerate(part.split(needle)):
                    if k:
                        split.append(tid)
                    if piece:
                        split.append(piece)
            parts = split
        return parts


class StreamDecoder:
    """Turns generated token ids into text as they come, never emitting half a UTF-8 character.

    Joined, the outputs of feed() and flush() equal Tokenizer.detokenize(ids, special), except
    that detokenize also applies what needs the whole text: the leading-space strip of
    add_space_prefix vocabularies and the clean-up of clean_spaces pre-tokenizers.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool) -> None:
        self._tokenizer = tokenizer
        self._special = special
        # Same rules as bytes.decode("utf-8", "replace") on the whole, applied incrementally.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.piece_bytes(token_id, self._special))

    def flush(self) -> str:
        """What is still held back (an unfinished character comes out as U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """A GGUF model's tokenizer; see the module docstring for the rules."""

    def __init__(self, vocab: Vocab, encoder: _FragmentEncoder, model: str) -> None:
        self._vocab = vocab
        self._encoder = encoder
        self.model: str = model  # tokenizer.ggml.model: "gpt2" or "llama"
        self.n_vocab: int = vocab.n_vocab
        self.bos_id: int | None = vocab.bos_id
        self.eos_id: int | None = vocab.eos_id
        self.add_bos: bool = vocab.add_bos
        self.add_eos: bool = vocab.add_eos
        self.add_space_prefix: bool = vocab.add_space_prefix
        self.stop_ids: frozenset[int] = vocab.eog_ids
        # What add_special puts around the text (Vocab made sure the ids exist).
        self._prefix = [vocab.bos_id] if vocab.add_bos and vocab.bos_id is not None else []
        self._suffix = [vocab.eos_id] if vocab.add_eos and vocab.eos_id is not None else []
        # SentencePiece puts a space in front of text that follows BOS or a special token.
        self._space_after_special = model == "llama" and vocab.add_space_prefix
        self._specials = _SpecialSplitter(vocab, vocab.special_tokens())
        self._attrs = vocab.attrs.tolist()
        self._pieces: list[bytes | None] = [None] * vocab.n_vocab

    @classmethod
    @gc_paused()  # tens of thousands of new tuples: 40 of SmolLM2's 90 ms went to collections
    def from_metadata(cls, md: Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF metadata dict (key -> value, as gguf_file.read_gguf gives it)."""
        model = md.get(KEY + "model")
        if model is None:
            raise ModelFormatError(f"the GGUF has no {KEY}model; it carries no tokenizer")
        if model == "gpt2":
            # llama.cpp adds BOS by default only for a few pre-tokenizers (llama3, tekken).
            vocab = Vocab.from_metadata(md, spm=False, add_bos_default=default_add_bos(md))
            return cls(vocab, ByteLevelBPE(vocab, md), model)
        if model == "llama":
            vocab = Vocab.from_metadata(md, spm=True, add_bos_default=True)
            return cls(vocab, SentencePieceBPE(vocab), model)
        raise UnsupportedError(f"tokenizer model {model!r} is not supported "
                               f"(supported {KEY}model values: {', '.join(SUPPORTED_MODELS)})")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of text; add_special adds BOS/EOS as the GGUF says, parse_special turns
        control-token texts such as "<|im_start|>" into their ids."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot reach llama.cpp as UTF-8 either
            text = text.encode("utf-8", "replace").decode("utf-8")
        out: list[int] = list(self._prefix) if add_special else []
        after_special = True
        for part in self._specials.split(text, parse_special) if text else ():
            if isinstance(part, int):
                out.append(part)
                after_special = True
                continue
            if self._space_after_special and after_special:
                part = " " + part
            out.extend(self._encoder.encode(part))
            after_special = False
        if add_special:
            out.extend(self._suffix)
        return out

    def ids_with(self, attr: Attr) -> list[int]:
        """Ids of the tokens that have any of the `attr` bits (e.g. Attr.CONTROL)."""
        return [i for i, a in enumerate(self._attrs) if a & attr]

    def piece_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The raw bytes one token contributes (control tokens only with special=True)."""
        if not 0 <= token_id < self.n_vocab:
            raise BadInputError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        attr = self._attrs[token_id]
        if attr & _HIDDEN and not special:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._render(token_id, attr)
            self._pieces[token_id] = piece
        return piece

    def _render(self, token_id: int, attr: int) -> bytes:
        text = self._vocab.texts[token_id]
        if attr & _VERBATIM:
            return text.encode("utf-8")
        if attr & Attr.NORMAL:
            return self._encoder.normal_piece(text)
        if attr & Attr.BYTE:
            if len(text) != 6 or not text.startswith("<0x"):
                raise ModelFormatError(f"byte token {token_id} is {text!r}, not <0xXX>; the GGUF is corrupt")
            return bytes([int(text[3:5], 16)])
        return b""  # unused/undefined tokens render as nothing, as in llama.cpp

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of ids; invalid UTF-8 (e.g. a cut-off character) becomes U+FFFD."""
        data = bytearray()
        for k, tid in enumerate(ids):
            piece = self.piece_bytes(int(tid), special)
            if k == 0 and self.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]  # the space SentencePiece put in front of the text
            data += piece
        return self._encoder.clean(bytes(data)).decode("utf-8", "replace")

    def stream(self, special: bool = False) -> StreamDecoder:
        """A decoder for ids arriving one at a time (see StreamDecoder)."""
        return StreamDecoder(self, special)
