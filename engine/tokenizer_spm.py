"""SentencePiece vocabularies (tokenizer.ggml.model = "llama"), tokenized as llama.cpp does.

llama.cpp's SPM tokenizer is not SentencePiece's Viterbi: it starts from single characters
and repeatedly merges the adjacent pair whose concatenation is the highest-scoring token
(leftmost on ties), then spells whatever is left that is not a token as <0xXX> byte tokens.
That greedy order is what we reproduce, so ids match llama.cpp's rather than SentencePiece's
where the two disagree.
"""

from __future__ import annotations

import heapq

from numallm.errors import ModelFormatError
from numallm.engine.tokenizer_vocab import KEY, Vocab

SPACE = "\u2581"  # '▁', SentencePiece's visible space


class SentencePieceBPE:
    """Encodes raw text fragments (special tokens already split out) to ids."""

    def __init__(self, vocab: Vocab) -> None:
        if vocab.scores is None:
            raise ModelFormatError(f"SentencePiece tokenizer without {KEY}scores; the GGUF is incomplete")
        self._ids = vocab.ids
        self._neg_scores = (-vocab.scores.astype("float64")).tolist()
        # llama.cpp's byte_to_token: the <0xXX> piece, else the byte itself as a one-character piece.
        self._byte_ids = [vocab.ids.get(f"<0x{b:02X}>", vocab.ids.get(chr(b)) if b < 0x80 else None)
                          for b in range(256)]

    def encode(self, text: str) -> list[int]:
        text = text.replace(" ", SPACE)
        n = len(text)
        if n == 0:
            return []
        ids, neg = self._ids, self._neg_scores
        # Symbol i starts at character i; size[i] == 0 once merged into its left neighbour.
        size = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            t = ids.get(text[i:i + 2])
            if t is not None:
                heap.append((neg[t], i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, total = pop(heap)
            a, b = size[left], size[right]
            # Stale entry: one side was merged away or grew since it was queued.
            if a == 0 or b == 0 or a + b != total:
                continue
            size[left], size[right] = total, 0
            after = nxt[right]
            nxt[left] = after
            before = prv[left]
            if before >= 0:
                t = ids.get(text[before:left + total])
                if t is not None:
                    push(heap, (neg[t], before, left, size[before] + total))
            if after >= 0:
                prv[after] = left
                t = ids.get(text[left:after + size[after]])
                if t is not None:
                    push(heap, (neg[t], left, after, total + size[after]))
        out: list[int] = []
        i = 0
        while i >= 0:
            piece = text[i:i + size[i]]
            t = ids.get(piece)
            if t is not None:
                out.append(t)
            else:
                out.extend(self._byte_token(b) for b in piece.encode("utf-8"))
            i = nxt[i]
        return out

    def _byte_token(self, byte: int) -> int:
        t = self._byte_ids[byte]
        if t is None:
            raise ModelFormatError(f"the vocabulary has no <0x{byte:02X}> byte token for a character "
                                   f"it cannot spell; the GGUF's tokenizer is incomplete")
        return t

    @staticmethod
    def normal_piece(text: str) -> bytes:
        """The bytes a normal token stands for."""
        return text.replace(SPACE, " ").encode("utf-8")

    def clean(self, data: bytes) -> bytes:
        """SentencePiece vocabularies need no clean-up after detokenizing."""
        return data
