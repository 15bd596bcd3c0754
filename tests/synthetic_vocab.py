"""Small but real tokenizer vocabularies for the synthetic GGUF models.

Merges are learnt from a fixed English text, so the result is deterministic and the
words a test is likely to type (chat roles, "the") become multi-byte tokens while
everything else falls back to bytes. Two flavours, as in the real models:
- gpt2_vocab: GPT-2 byte-level BPE (SmolLM2): 256 byte symbols + merges.
- spm_vocab: SentencePiece-style (Gemma 3): "▁"-prefixed pieces with scores, plus
  <0xNN> byte-fallback tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from gguf import TokenType

CORPUS = (
    "Hello, world! The quick brown fox jumps over the lazy dog. The user asks the assistant "
    "a question and the assistant answers the user. <|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of France is Paris. There are three thousand "
    "things in the theatre, and they think that these are the best of them all. "
    "Numbers like 12, 345 and 6789 are tokenized digit by digit in the beginning; "
    "then the tokenizer learns that the the the is common. Inference on the CPU runs "
    "the model layer by layer, and the memory of each NUMA node holds its own weights."
)
# GPT-2's pre-tokenizer with \p{L}/\p{N} spelt for Python's re; only used for training.
_GPT2_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")
SPM_SPACE = "\u2581"  # "▁", SentencePiece's stand-in for a space


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]  # "a b" lines (gpt2 only)
    scores: list[float]  # merge priority, higher first (spm only)


def byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable character standing for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def learn_merges(words: Iterable[tuple[str, ...]], n_merges: int) -> list[tuple[str, str]]:
    """BPE training: repeatedly merge the most frequent adjacent pair of symbols.

    Ties go to the lexicographically smallest pair so the result is deterministic; a
    pair whose concatenation is already a symbol is skipped so every merge adds one
    new token.
    """
    counts = Counter(words)
    known = {s for word in counts for s in word}
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in counts.items():
            for pair in pairwise(word):
                if pair[0] + pair[1] not in known:
                    pairs[pair] += count
        if not pairs:
            raise ValueError(f"the corpus only supports {len(merges)} merges, {n_merges} asked: use a smaller n_vocab")
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        known.add(best[0] + best[1])
        counts = Counter({_merge_pair(word, best): count for word, count in counts.items()})
    return merges


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def gpt2_vocab(specials: tuple[str, ...], n_vocab: int) -> Vocab:
    """Specials (CONTROL), then the 256 byte symbols, then learnt merges up to n_vocab."""
    symbols = byte_symbols()
    n_merges = n_vocab - len(specials) - 256
    if n_merges < 0:
        raise ValueError(f"n_vocab must be at least {len(specials) + 256}, got {n_vocab}")
    words = (tuple(symbols[b] for b in piece.encode("utf-8")) for piece in _GPT2_SPLIT.findall(CORPUS))
    merges = learn_merges(words, n_merges)
    tokens = [*specials, *symbols, *(a + b for a, b in merges)]
    types = [TokenType.CONTROL] * len(specials) + [TokenType.NORMAL] * (len(tokens) - len(specials))
    return Vocab(tokens, [int(t) for t in types], [f"{a} {b}" for a, b in merges], [])


def spm_vocab(specials: tuple[str, ...], user_defined: tuple[str, ...], n_vocab: int) -> Vocab:
    """Gemma's layout: specials (CONTROL, score -1000), user-defined pieces, <0xNN> bytes,
    then the corpus's characters and learnt merges, scored so earlier merges win."""
    words = [tuple(SPM_SPACE + w) for w in CORPUS.replace("\n", " ").split(" ") if w]
    chars = sorted({c for w in words for c in w})
    fixed = [*specials, *user_defined, *(f"<0x{b:02X}>" for b in range(256))]
    n_merges = n_vocab - len(fixed) - len(chars)
    if n_merges < 0:
        raise ValueError(f"n_vocab must be at least {len(fixed) + len(chars)}, got {n_vocab}")
    merged = [a + b for a, b in learn_merges(words, n_merges)]
    tokens = [*fixed, *merged, *chars]
    types = (
        [TokenType.CONTROL] * len(specials) + [TokenType.USER_DEFINED] * len(user_defined)
        + [TokenType.BYTE] * 256 + [TokenType.NORMAL] * (len(merged) + len(chars))
    )
    # SentencePiece merges the adjacent pair whose result scores highest: first-learnt first.
    scores = [-1000.0] * (len(specials) + len(user_defined)) + [0.0] * 256
    scores += [-float(rank) for rank in range(len(merged) + len(chars))]
    return Vocab(tokens, [int(t) for t in types], [], scores)


def with_digit_merges(tokens: list[str], token_types: list[int], merges: list[str]) -> tuple[list[str], list[int], list[str]]:
    """A byte-level BPE vocabulary plus tokens and merges for every 2- and 3-digit string.

    SmolLM2's vocabulary spells numbers digit by digit, so on it a pre-tokenizer that cuts
    digit runs into threes (llama3) tokenizes as one that cuts them into ones (qwen2); with
    these merges (lowest priority, after the file's own) the difference shows.
    """
    known = set(tokens)
    new_tokens: list[str] = []
    new_merges: list[str] = []
    for a in "0123456789":
        for b in "0123456789":
            if a + b not in known:
                new_tokens.append(a + b)
                new_merges.append(f"{a} {b}")
    for ab in (a + b for a in "0123456789" for b in "0123456789"):
        for c in "0123456789":
            if ab + c not in known:
                new_tokens.append(ab + c)
                new_merges.append(f"{ab} {c}")
    return ([*tokens, *new_tokens], [*token_types, *[int(TokenType.NORMAL)] * len(new_tokens)],
            [*merges, *new_merges])
