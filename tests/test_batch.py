"""Engine.eval_batch: several sequences in one forward pass give what each gives alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from numallm.engine import Engine
from numallm.engine.forward import kv_writers
from numallm.errors import BadInputError
from numallm.kernels.jit import GEMM_MIN_TOKENS
from numallm.numa.split import part

PROMPTS = ("Hello world, this is a test", "The capital of France is", "1, 2, 3,")


@pytest.fixture(scope="module")
def eng(tiny_llama: Path) -> Engine:
    with Engine(tiny_llama, threads=2, n_slots=3) as e:
        yield e


def _prefill(e: Engine, ids: list[int], slot: int) -> np.ndarray:
    n = len(ids)
    return e.eval_batch(np.array(ids), np.full(n, slot), np.arange(n), [n - 1])[0]


def test_batched_decode_equals_each_sequence_alone(eng: Engine) -> None:
    # Below the GEMM threshold a batch shares each weight block's unpacking among the
    # tokens but accumulates every token exactly as the one-token kernel does, and every
    # other step is per token, so the results agree to the bit, as the server's "same
    # output alone or beside others" needs.
    ids = [eng.tokenize(p) for p in PROMPTS]
    first = [int(_prefill(eng, x, s).argmax()) for s, x in enumerate(ids)]
    alone = [eng.eval_batch([t], [s], [len(x)], [0])[0] for s, (t, x) in enumerate(zip(first, ids))]
    # The same step again, all three sequences at once (positions are overwritten).
    together = eng.eval_batch(first, [0, 1, 2], [len(x) for x in ids], [0, 1, 2])
    for s in range(3):
        np.testing.assert_array_equal(together[s], alone[s])


def test_prefill_beside_a_decode_equals_both_alone(eng: Engine) -> None:
    a, b = (eng.tokenize(p) for p in PROMPTS[:2])
    la = _prefill(eng, a, 0)
    tok = int(la.argmax())
    step_alone = eng.eval_batch([tok], [0], [len(a)], [0])[0]
    lb_alone = _prefill(eng, b, 1)
    mixed = eng.eval_batch([tok] + b, [0] + [1] * len(b), [len(a)] + list(range(len(b))), [0, len(b)])
    np.testing.assert_array_equal(mixed[0], step_alone)
    np.testing.assert_array_equal(mixed[1], lb_alone)


def test_long_prompts_prefilled_together_equal_each_alone(eng: Engine) -> None:
    # Prompts of GEMM_MIN_TOKENS or more take the GEMM alone and together; it computes
    # each token on its own, so the server may prefill several prompts in one call.
    long = [eng.tokenize(" ".join([p] * 12)) for p in PROMPTS]
    assert all(len(x) >= GEMM_MIN_TOKENS for x in long) and len({len(x) for x in long}) > 1
    alone = [_prefill(eng, x, s) for s, x in enumerate(long)]
    together = eng.eval_batch(np.concatenate(long), np.concatenate([np.full(len(x), s) for s, x in enumerate(long)]),
                              np.concatenate([np.arange(len(x)) for x in long]), np.cumsum([len(x) for x in long]) - 1)
    for s in range(3):
        np.testing.assert_array_equal(together[s], alone[s])


def test_slots_do_not_see_each_other(eng: Engine) -> None:
    # A slot reused from position 0 forgets its old sequence; other slots are untouched.
    a, b = (eng.tokenize(p) for p in PROMPTS[:2])
    ref = _prefill(eng, a, 2)
    _prefill(eng, b, 0)
    _prefill(eng, b, 2)
    np.testing.assert_array_equal(_prefill(eng, a, 2), ref)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tokens=[1], slots=[3], positions=[0], logits_rows=[0]), "slots must be in"),
    (dict(tokens=[1], slots=[0], positions=[10 ** 6], logits_rows=[0]), "positions must be in"),
    (dict(tokens=[1, 2], slots=[0], positions=[0, 1], logits_rows=[0]), "of one length"),
    (dict(tokens=[1], slots=[0], positions=[0], logits_rows=[1]), "logits rows must be in"),
    (dict(tokens=[10 ** 6], slots=[0], positions=[0], logits_rows=[0]), "token ids must be in"),
])
def test_bad_batches_are_clear_errors(eng: Engine, kwargs: dict, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        eng.eval_batch(**kwargs)


def test_kv_writers_cover_each_home_once() -> None:
    # 9 query heads over 3 KV heads, 4 workers on 2 nodes: each node gets every KV head
    # its workers read, from exactly one of its workers.
    homes = [0, 0, 1, 1]
    heads = kv_writers(9, 3, homes)
    for node in (0, 1):
        ws = [w for w, h in enumerate(homes) if h == node]
        written = [int(h) for w in ws for h in heads[w]]
        assert len(written) == len(set(written))
        needed = {q // 3 for w in ws for q in range(*part(9, 1, w, 4))}
        assert set(written) == needed

