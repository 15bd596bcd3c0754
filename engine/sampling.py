"""Next-token sampling with llama.cpp's sampler chain, order and defaults.

The chain runs in llama.cpp's default order: repetition penalty, top-k, top-p, min-p,
temperature, then one draw from the softmax of the surviving candidates. Temperature 0
is greedy: the argmax of the penalised logits, lowest id on ties.

It runs once per generated token over the whole vocabulary (49152 or 262144 logits), so
no stage sorts the vocabulary: top-k selects by partition and only the kept candidates
are sorted; top-p first drops the tail that provably cannot reach the nucleus.
"""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from numallm.errors import BadInputError, NumallmError

@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings; the defaults are llama.cpp's (common/common.h).

    top_k 0, top_p 1 and min_p 0 switch their stage off, repeat_penalty 1 switches the
    penalty off, repeat_last_n -1 penalises the whole history and 0 none of it, and
    seed -1 draws a random seed (kept in `Sampler.seed` so a run can be repeated).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1

    def validate(self) -> SamplingParams:
        """Return self, or raise BadInputError naming the first bad setting."""
        _check_real("temperature", self.temperature, lambda v: v >= 0, "a finite number >= 0 (0 = greedy)")
        _check_int("top_k", self.top_k, lambda v: v >= 0, "an integer >= 0 (0 = off)")
        _check_real("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1] (1 = off)")
        _check_real("min_p", self.min_p, lambda v: 0 <= v <= 1, "in [0, 1] (0 = off)")
        _check_real("repeat_penalty", self.repeat_penalty, lambda v: v > 0, "a finite number > 0 (1 = off)")
        _check_int("repeat_last_n", self.repeat_last_n, lambda v: v >= -1,
                   "an integer >= -1 (-1 = whole history, 0 = off)")
        _check_int("seed", self.seed, lambda v: v >= -1, "an integer >= 0, or -1 for random")
        return self


def _check_real(name: str, value: object, in_range: Callable[[float], bool], wanted: str) -> None:
    # bool is a number to Python but never a meaningful sampler setting.
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and in_range(float(value)))
    if not ok:
        raise BadInputError(f"sampling: {name} must be {wanted}, got {value!r}")


def _check_int(name: str, value: object, in_range: Callable[[int], bool], wanted: str) -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and in_range(int(value))
    if not ok:
        raise BadInputError(f"sampling: {name} must be {wanted}, got {value!r}")


@dataclass(frozen=True)
class TokenMask:
    """The tokens a grammar allows next, by index on whichever side is smaller: the few
    allowed ids, or (inside a string, say) the few forbidden ones. Applying it is then a
    short scatter (a boolean putmask over the vocabulary costs several times more)."""

    ids: np.ndarray  # sorted: the allowed ids, or with `forbidden` the forbidden ones
    forbidden: bool
    n_tokens: int  # logits past this many (a model with more logits than tokens) are never allowed

    @classmethod
    def from_bools(cls, allowed: np.ndarray) -> TokenMask:
        """From a bool per token id."""
        n = int(np.count_nonzero(allowed))
        if 2 * n > allowed.size:
            return cls(np.flatnonzero(~allowed), True, allowed.size)
        return cls(np.flatnonzero(allowed), False, allowed.size)

    def allows(self, token: int) -> bool:
        i = int(np.searchsorted(self.ids, token))
        listed = i < self.ids.size and int(self.ids[i]) == token
        return token < self.n_tokens and listed != self.forbidden

    def apply(self, work: np.ndarray) -> None:
        """-inf for the logits of the tokens it forbids."""
        if self.forbidden:
            work[self.ids] = -np.inf
            work[self.n_tokens:] = -np.inf
            return
        if self.ids.size == 0:
            raise NumallmError("the grammar allows no next token")
        kept = work[self.ids]
        work.fill(-np.inf)
        work[self.ids] = kept


class Sampler:
    """Draws token ids from logits; the same seed and inputs give the same tokens."""

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self.params = params.validate()
        if n_vocab < 1:
            raise ValueError(f"n_vocab must be >= 1, got {n_vocab}")
        self.n_vocab = n_vocab
        self.seed: int = params.seed if params.seed >= 0 else secrets.randbits(32)
        self._rng = np.random.default_rng(self.seed)
        self._work = np.empty(n_vocab, dtype=np.float32)  # penalised copy, reused per token

    def sample(self, logits: np.ndarray, history: Sequence[int] = (), allowed: TokenMask | None = None) -> int:
        """The next token id. `history` is every token so far (prompt included); `allowed`
        (from a grammar) keeps the other tokens out."""
        ids, probs = self.distribution(logits, history, allowed)
        if ids.size == 1:
            return int(ids[0])
        cdf = np.cumsum(probs)
        # side="right" never lands on a zero-probability candidate.
        i = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])

    def distribution(self, logits: np.ndarray, history: Sequence[int] = (),
                     allowed: TokenMask | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The candidates the chain keeps and their probabilities (summing to 1), in no promised order."""
        p = self.params
        work = self._penalised(logits, history)
        if allowed is not None:
            # before the chain, as llama.cpp's grammar sampler: top-k and the rest then
            # choose among the allowed tokens
            allowed.apply(work)
        if p.temperature == 0:
            return np.array([np.argmax(work)], dtype=np.int64), np.ones(1)
        ids, vals, is_sorted = _top_k(work, p.top_k)
        if p.top_p < 1:
            ids, vals = _top_p(ids, vals, p.top_p)
            is_sorted = True
        if p.min_p > 0:
            ids, vals = _min_p(ids, vals, p.min_p, is_sorted)
        return ids, _softmax(vals.astype(np.float64) / p.temperature)

    def _penalised(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits have shape {logits.shape}, expected ({self.n_vocab},)")
        work = self._work
        np.copyto(work, logits)
        top = work.max()
        if not math.isfinite(top):
            raise NumallmError(f"logits contain NaN or infinity (max {top}); the forward pass produced invalid values")
        p = self.params
        if p.repeat_penalty == 1 or p.repeat_last_n == 0 or len(history) == 0:
            return work
        recent = history if p.repeat_last_n == -1 else history[-p.repeat_last_n:]
        seen = np.unique(np.asarray(recent, dtype=np.int64))
        seen = seen[(seen >= 0) & (seen < self.n_vocab)]
        v = work[seen]
        penalty = np.float32(p.repeat_penalty)
        # Dividing a negative logit would make the token likelier, so llama.cpp multiplies
        # those; each seen token is penalised once however often it occurred.
        work[seen] = np.where(v <= 0, v * penalty, v / penalty)
        return work


def _top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ids, logits, sorted): the k best sorted by logit descending, or everything unsorted."""
    n = logits.size
    if k == 0 or k >= n:
        return np.arange(n), logits, False
    # The k-th largest of an evenly strided sample (about sqrt(n*k) values, so at least k)
    # bounds the true k-th largest from below: the top k are among the few logits at or
    # above it, and only those get partitioned.
    sample = logits[:: max(1, math.isqrt(n // k))]
    bound = np.partition(sample, sample.size - k)[sample.size - k]
    cand = np.flatnonzero(logits >= bound)
    vals = logits[cand]
    kth = np.partition(vals, vals.size - k)[vals.size - k]
    # Everything above the k-th value, then ties at it by lowest id (cand is ascending),
    # so the kept set does not depend on how partition orders equal values.
    above = cand[vals > kth]
    ties = cand[vals == kth][: k - above.size]
    ids = np.sort(np.concatenate((above, ties)))
    kept = logits[ids]
    order = np.argsort(-kept, kind="stable")
    return ids[order], kept[order], True


def _top_p(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """The shortest run of most probable candidates whose probabilities sum to >= p, sorted."""
    # float32 over all candidates (the whole vocabulary when top-k is off), float64 for
    # the few that can matter.
    weights = np.exp(logits - logits.max())
    total = float(weights.sum(dtype=np.float64))
    # The candidates below (1-p)/n of the mass each hold less than 1-p together, so the
    # nucleus lies among the others: only those need sorting.
    big = np.flatnonzero(weights >= (1.0 - p) / weights.size * total)
    probs = weights[big].astype(np.float64) / total
    order = np.argsort(-probs, kind="stable")
    keep = min(int(np.searchsorted(np.cumsum(probs[order]), p, side="left")) + 1, order.size)
    chosen = big[order[:keep]]
    return ids[chosen], logits[chosen]


def _min_p(ids: np.ndarray, logits: np.ndarray, p: float, is_sorted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Candidates whose probability is at least p times the best one's (order kept)."""
    top = logits[0] if is_sorted else logits.max()
    mask = logits >= top + np.float32(math.log(p))
    return ids[mask], logits[mask]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    e /= e.sum()
    return e
