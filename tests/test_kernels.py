"""numallm.kernels against gguf.quants.dequantize + numpy, for all 25 supported types.

Weights: gguf.quants.quantize for the types it can encode; for the K-quants and the
i-quants (which gguf-py only decodes) random bytes with sane block scales, which is
every bit pattern of the quants and sub-scales a real file can hold (the i-quants'
edge cases, bit for bit: tests/test_kernels_iquants.py). Real tensors
of both models are checked in test_kernels_models.py.

Error bounds. The float types keep x in float32, so they differ from float64 only by
float32 rounding of a cols-long sum: |err| <= 1e-5 * sum|w*x| is ~100x that bound's
worst case at these sizes. The quantized types quantize x to int8 blocks of 32
(d_b = max|x_b| / 127, |x - x_hat| <= d_b / 2 per element, as llama.cpp's q8_0), so
|err_row| <= sum_b d_b/2 * sum_{j in b} |w_j|, plus the same float32 rounding term;
this bound is rigorous, and a wrong scale, offset or nibble order breaks it by
orders of magnitude.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T
from numallm import kernels as K
from numallm.errors import UnsupportedError
from iq_blocks import RANDOM_BLOCK_TYPES, random_blocks
from numallm.kernels import jit
from numallm.kernels.traits import BY_TYPE

FLOAT_TYPES = (T.F32, T.F16, T.BF16)
K_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
I_TYPES = tuple(sorted(RANDOM_BLOCK_TYPES))  # the i-quants, TQ1_0, TQ2_0, MXFP4
ALL_TYPES = FLOAT_TYPES + (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0) + K_TYPES + I_TYPES
# Byte offsets of the float16 super-block scales (d, dmin) inside each K-quant block.
K_SCALE_OFFSETS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def make_weight(qtype: T, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """File bytes [rows, row_bytes] of a weight of this type."""
    if qtype in RANDOM_BLOCK_TYPES:
        return random_blocks(qtype, rows, cols, seed)
    rng = np.random.default_rng(seed)
    if qtype in K_TYPES:
        bs, ts = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (rows, cols // bs, ts), dtype=np.uint8)
        for off in K_SCALE_OFFSETS[qtype]:
            d = rng.uniform(1e-3, 2e-2, (rows, cols // bs, 1)).astype(np.float16)
            raw[:, :, off:off + 2] = d.view(np.uint8)
        return raw.reshape(rows, -1)
    data = rng.standard_normal((rows, cols)).astype(np.float32)
    if qtype == T.F32:
        return data.view(np.uint8)
    if qtype == T.F16:
        return data.astype(np.float16).view(np.uint8)
    return quants.quantize(data, qtype)


def reference(qtype: T, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return quants.dequantize(raw, qtype).reshape(rows, cols).astype(np.float64)


def error_bound(qtype: T, W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-row bound on |kernel - W @ x| (see the module docstring)."""
    absw = np.abs(W)
    bound = 1e-5 * (absw @ np.abs(x.astype(np.float64))) + 1e-30
    if qtype not in FLOAT_TYPES:
        blk = 256 if BY_TYPE[qtype].q8_k else 32  # q8_K: one activation scale per 256
        d = np.abs(x.astype(np.float64)).reshape(-1, blk).max(axis=1) / 127
        bound += absw.reshape(W.shape[0], -1, blk).sum(axis=2) @ (d / 2)
    return bound


def shapes(qtype: T) -> list[tuple[int, int]]:
    """(rows, cols) with odd row counts: the smallest K the type allows, a few blocks,
    and 19 blocks of 32 (two full groups of 8 and an odd tail in the grouped layout)."""
    bs = GGML_QUANT_SIZES[qtype][0]
    return [(1, bs), (7, max(bs, 32)), (37, 3 * max(bs, 32)), (5, 19 * 32 if bs <= 32 else 2 * bs)]


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_and_get_rows_are_exact(qtype: T) -> None:
    for rows, cols in shapes(qtype):
        raw = make_weight(qtype, rows, cols)
        w = K.pack(qtype, raw, rows, cols)
        ref = reference(qtype, raw, rows, cols).astype(np.float32)
        assert np.array_equal(K.dequantize(qtype, w, rows, cols), ref), (rows, cols)
        ids = np.array([rows - 1, 0, rows // 2, rows // 2])
        out = np.full((len(ids), cols), np.nan, np.float32)
        K.get_rows(qtype, w, rows, cols, ids, out)
        assert np.array_equal(out, ref[ids])


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_matvec_row_ranges(qtype: T) -> None:
    rng = np.random.default_rng(1)
    for rows, cols in shapes(qtype):
        raw = make_weight(qtype, rows, cols, seed=rows)
        w = K.pack(qtype, raw, rows, cols)
        W = reference(qtype, raw, rows, cols)
        x = rng.standard_normal(cols).astype(np.float32)
        out = np.full(rows + 2, np.nan, np.float32)
        # Three workers with uneven shares, as a NUMA split of an odd row count gives.
        cuts = sorted({0, rows // 3, (2 * rows) // 3 + 1 if rows > 1 else rows, rows})
        for r0, r1 in itertools.pairwise(cuts):
            K.matvec(qtype, w, rows, cols, x, out, r0, r1)
        err = np.abs(out[:rows] - W @ x)
        assert np.all(err <= error_bound(qtype, W, x)), (rows, cols, err.max())
        assert np.isnan(out[rows:]).all()  # nothing written past r1


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_matches_per_token(qtype: T) -> None:
    """5 tokens take the int8 row kernels, 13 the tile GEMM (int8 for quantized types,
    float32 for float ones; full groups of 8 tokens and a partial one; 27 rows are one
    full and one partial tile of 16)."""
    rng = np.random.default_rng(2)
    rows, cols = 37, 2 * max(GGML_QUANT_SIZES[qtype][0], 32)
    raw = make_weight(qtype, rows, cols)
    w = K.pack(qtype, raw, rows, cols)
    W = reference(qtype, raw, rows, cols)
    r0, r1 = 3, 30
    for n in (5, jit.GEMM_MIN_TOKENS + 5):
        X = rng.standard_normal((n, cols)).astype(np.float32)
        out = np.full((n, rows), np.nan, np.float32)
        K.matmul(qtype, w, rows, cols, X, out, r0, r1)
        for t in range(n):
            err = np.abs(out[t, r0:r1] - W[r0:r1] @ X[t])
            assert np.all(err <= error_bound(qtype, W[r0:r1], X[t])), (n, t)
        assert np.isnan(out[:, :r0]).all() and np.isnan(out[:, r1:]).all()


@pytest.mark.parametrize("qtype", (T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K), ids=lambda t: t.name)
def test_int8_activation_error_is_llama_cpp_level(qtype: T) -> None:
    """Relative L2 error of a realistic matvec: about 5e-3 (issue 5's prototype and
    llama.cpp), all of it from quantizing x; 2e-2 leaves room for the random weights."""
    rows, cols = 64, 1024
    raw = make_weight(qtype, rows, cols, seed=3)
    W = reference(qtype, raw, rows, cols)
    x = np.random.default_rng(3).standard_normal(cols).astype(np.float32)
    out = np.empty(rows, np.float32)
    K.matvec(qtype, K.pack(qtype, raw, rows, cols), rows, cols, x, out, 0, rows)
    ref = W @ x
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-2


@pytest.mark.parametrize("qtype", (T.Q4_1, T.Q6_K, T.F16), ids=lambda t: t.name)
def test_batch_equals_token_by_token(qtype: T) -> None:
    """A batch through matmul (any size) gives what its tokens give one at a time through
    matvec, up to float32 summation order: the engine's prompt and generation agree."""
    rows, cols = 20, 512
    raw = make_weight(qtype, rows, cols)
    w = K.pack(qtype, raw, rows, cols)
    n_all = jit.GEMM_MIN_TOKENS + 3
    X = np.random.default_rng(6).standard_normal((n_all, cols)).astype(np.float32)
    single = np.empty((n_all, rows), np.float32)
    for t in range(n_all):
        K.matvec(qtype, w, rows, cols, X[t], single[t], 0, rows)
    scale = np.abs(reference(qtype, raw, rows, cols)) @ np.abs(X.T).astype(np.float64)
    for n in (3, n_all):  # the int8 row kernels, then the tile GEMM
        out = np.empty((n, rows), np.float32)
        K.matmul(qtype, w, rows, cols, X[:n], out, 0, rows)
        assert np.all(np.abs(out - single[:n]) <= 1e-5 * scale[:, :n].T), n


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t not in FLOAT_TYPES + (T.Q8_0,)], ids=lambda t: t.name)
def test_unpacked_form_is_the_dequantized_weight(qtype: T) -> None:
    """The int8 GEMM's form of a row (kernels/drivers/unpack.py): d[k // S] * q[k] + m[k // S]
    is the reference dequantization up to float32 rounding of its scale products. (3
    rows: Q4_0 and Q4_1 stay grouped, as a matrix's last rows % 16 do; Q8_0, always
    multiplied in tiles, has no unpacked form.)"""
    from numallm.kernels.drivers.unpack import unpack_row
    from numallm.kernels.traits import sub_size

    rows, cols = 3, 19 * 32 if GGML_QUANT_SIZES[qtype][0] == 32 else 512
    raw = make_weight(qtype, rows, cols, seed=7)
    w = K.pack(qtype, raw, rows, cols)
    ref = reference(qtype, raw, rows, cols)
    bs, ts = GGML_QUANT_SIZES[qtype]
    S = sub_size(int(qtype))
    q, d, m = np.empty(cols, np.uint8), np.empty(cols // S, np.float32), np.empty(cols // S, np.float32)
    for r in range(rows):
        unpack_row(int(qtype), w, r * cols // bs * ts, cols // bs, q, d, m)
        got = np.repeat(d, S).astype(np.float64) * q + np.repeat(m, S)
        assert np.allclose(got, ref[r], rtol=1e-6, atol=1e-6 * np.abs(ref[r]).max()), r


def test_parallel_threads_on_disjoint_rows_match_one_thread() -> None:
    qtype, rows, cols = T.Q4_1, 301, 512
    raw = make_weight(qtype, rows, cols)
    w = K.pack(qtype, raw, rows, cols)
    x = np.random.default_rng(4).standard_normal(cols).astype(np.float32)
    single = np.empty(rows, np.float32)
    K.matvec(qtype, w, rows, cols, x, single, 0, rows)
    out = np.full(rows, np.nan, np.float32)
    cuts = [0, 150, rows]

    def work(i: int) -> None:
        for _ in range(200):
            K.matvec(qtype, w, rows, cols, x, out, cuts[i], cuts[i + 1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(out, single)


def test_pack_keeps_sizes_and_shards_by_rows() -> None:
    for qtype in ALL_TYPES:
        tiled = (T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.MXFP4, T.TQ2_0)
        assert K.row_group(qtype) == (16 if qtype in tiled else 1)
        assert K.packed_nbytes(qtype, 10, 512) == make_weight(qtype, 10, 512).nbytes
    # File-layout types pack with zero copy; grouped ones fill `out`.
    raw = make_weight(T.Q3_K, 3, 256)
    assert np.shares_memory(K.pack(T.Q3_K, raw, 3, 256), raw)
    # A shard packed from rows [lo, rows) alone computes what those rows of the whole do:
    # any row for a grouped type, a tile's first row for a tiled one.
    for qtype, rows, lo in ((T.Q5_0, 10, 4), (T.Q8_0, 37, 16)):
        cols = 19 * 32
        raw = make_weight(qtype, rows, cols)
        dest = np.zeros(K.packed_nbytes(qtype, rows, cols), np.uint8)
        assert K.pack(qtype, raw, rows, cols, out=dest) is dest
        shard = K.pack(qtype, raw[lo:], rows - lo, cols)
        x = np.random.default_rng(5).standard_normal(cols).astype(np.float32)
        whole, part = np.empty(rows, np.float32), np.empty(rows - lo, np.float32)
        K.matvec(qtype, dest, rows, cols, x, whole, 0, rows)
        K.matvec(qtype, shard, rows - lo, cols, x, part, 0, rows - lo)
        assert np.array_equal(whole[lo:], part)


def test_check_type_names_tensor_and_type() -> None:
    for qtype in K.SUPPORTED_TYPES:
        K.check_type(qtype, "blk.0.ffn_up.weight", 256)
    assert len(K.SUPPORTED_TYPES) == 25
    with pytest.raises(UnsupportedError, match=r"'blk\.3\.attn_q\.weight'.*Q8_1.*Q4_K"):
        K.check_type(T.Q8_1, "blk.3.attn_q.weight", 256)
    with pytest.raises(UnsupportedError, match=r"'blk\.0\.ffn_down\.weight'.*IQ2_XXS.*288.*256"):
        K.check_type(T.IQ2_XXS, "blk.0.ffn_down.weight", 288)
    with pytest.raises(UnsupportedError, match=r"'token_embd\.weight'.*Q4_K.*100.*256"):
        K.check_type(T.Q4_K, "token_embd.weight", 100)
    with pytest.raises(UnsupportedError, match=r"unknown GGML type 99"):
        K.check_type(99, "x", 32)  # type: ignore[arg-type]


def test_bad_ranges_and_shapes_raise_instead_of_reading_out_of_bounds() -> None:
    qtype, rows, cols = T.Q4_0, 4, 64
    w = K.pack(qtype, make_weight(qtype, rows, cols), rows, cols)
    x, out = np.zeros(cols, np.float32), np.zeros(rows, np.float32)
    for r0, r1 in ((0, 5), (-1, 2), (3, 2)):
        with pytest.raises(ValueError, match="row range"):
            K.matvec(qtype, w, rows, cols, x, out, r0, r1)
    with pytest.raises(ValueError, match="smaller"):
        K.matvec(qtype, w[:-1], rows, cols, x, out, 0, rows)
    with pytest.raises(ValueError, match="x must"):
        K.matvec(qtype, w, rows, cols, x[:32], out, 0, rows)
    with pytest.raises(IndexError):
        K.get_rows(qtype, w, rows, cols, np.array([4]), np.zeros((1, cols), np.float32))
