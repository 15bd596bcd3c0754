"""The compiled packers (kernels/families/q4_q8/tiles.py and kernels/families/q4_q8/grouped.py via kernels.pack) write
exactly the layouts of the numpy reference (tests/repack_reference.py), in place and
between buffers, on random blocks of every packed type and on every matrix of the
real models."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm import kernels
from numallm.engine.gguf_file import read_gguf
from numallm.kernels.traits import GROUPED, TILED_KINDS
from repack_reference import reference_pack

# Block counts per row: a short group of every length, one and two full groups, each
# followed by a group of every length.
BLOCKS_PER_ROW = tuple(range(1, 25))


def _random_rows(qtype: T, rows: int, cols: int, seed: int) -> np.ndarray:
    nbytes = kernels.packed_nbytes(qtype, rows, cols)
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


@pytest.mark.parametrize("qtype", sorted(set(GROUPED) | set(TILED_KINDS)), ids=lambda q: q.name)
def test_pack_matches_reference_on_random_blocks(qtype: T) -> None:
    bs = GGML_QUANT_SIZES[qtype][0]
    for nb, rows in itertools.product(BLOCKS_PER_ROW, (3, 35)):  # 35: two tiles and 3 grouped rows
        cols = nb * bs
        raw = _random_rows(qtype, rows, cols, seed=nb)
        want = reference_pack(qtype, raw, rows, cols)
        got = kernels.pack(qtype, raw, rows, cols)
        assert not np.shares_memory(got, raw)
        np.testing.assert_array_equal(got, want, err_msg=f"{qtype.name}, {nb} blocks per row")

        into = np.full(raw.size + 5, 0xAB, np.uint8)  # bytes past the rows stay untouched
        kernels.pack(qtype, raw, rows, cols, out=into)
        np.testing.assert_array_equal(into[:raw.size], want)
        assert (into[raw.size:] == 0xAB).all()

        inplace = raw.copy()
        assert kernels.pack(qtype, inplace, rows, cols, out=inplace) is inplace
        np.testing.assert_array_equal(inplace, want, err_msg=f"{qtype.name} in place, {nb} blocks per row")


def test_pack_changes_the_bytes_it_should() -> None:
    """Guards the reference comparison: the grouped and tiled layouts are not the file's."""
    for rows in (2, 16):
        raw = _random_rows(T.Q4_1, rows, 256, seed=0)
        assert not np.array_equal(kernels.pack(T.Q4_1, raw, rows, 256), raw)


@pytest.mark.parametrize(("qtype", "r0", "r1"), [(T.Q5_1, 3, 7), (T.Q4_1, 16, 35), (T.Q8_0, 16, 32)],
                         ids=["grouped", "tiled-to-end", "tiled"])
def test_pack_of_a_row_range_is_the_rows_of_the_whole(qtype: T, r0: int, r1: int) -> None:
    """The loader packs a matrix in row blocks: any row range (for the tiled types one
    that starts a tile and holds whole tiles or ends the matrix) must pack alone."""
    rows, cols = 35, 9 * 32
    raw = _random_rows(qtype, rows, cols, seed=1)
    whole = kernels.pack(qtype, raw, rows, cols)
    rb = kernels.packed_nbytes(qtype, 1, cols)
    part = kernels.pack(qtype, raw[r0 * rb:r1 * rb], r1 - r0, cols)
    np.testing.assert_array_equal(part, whole[r0 * rb:r1 * rb])


def test_threads_packing_row_blocks_in_place_give_the_whole() -> None:
    """The loader's use: reading threads each pack the rows they read, in place, at once."""
    rows, cols = 70, 23 * 32
    raw = _random_rows(T.Q4_1, rows, cols, seed=4)
    want = reference_pack(T.Q4_1, raw, rows, cols)
    rb = kernels.packed_nbytes(T.Q4_1, 1, cols)
    g = kernels.row_group(T.Q4_1)
    blocks = [raw[r * rb:(r + g) * rb] for r in range(0, rows, g)]  # the last one is shorter
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda b: kernels.pack(T.Q4_1, b, b.size // rb, cols, out=b), blocks))
    np.testing.assert_array_equal(raw, want)


def test_pack_rejects_short_buffers() -> None:
    raw = _random_rows(T.Q8_0, 2, 64, seed=2)
    with pytest.raises(ValueError, match="need"):
        kernels.pack(T.Q8_0, raw[:-1], 2, 64)
    with pytest.raises(ValueError, match="out must be"):
        kernels.pack(T.Q8_0, raw, 2, 64, out=np.empty(raw.size - 1, np.uint8))


@pytest.mark.parametrize("qtype", sorted(kernels.SUPPORTED_TYPES, key=int), ids=lambda t: t.name)
def test_in_file_layout_says_whether_pack_is_zero_copy(qtype: T) -> None:
    """The loader decides from in_file_layout (no Numba) whether a mapping can be used in
    place; pack itself must agree."""
    raw = _random_rows(qtype, 2, 256, seed=3)
    assert np.shares_memory(kernels.pack(qtype, raw, 2, 256), raw) == kernels.in_file_layout(qtype)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_pack_matches_reference_on_real_models(model: str) -> None:
    """Every grouped matrix of the file, on its first and last rows (the numpy reference
    is slow; the rows between take the same code)."""
    from numallm.engine.model_store import fetch_known_model

    path: Path = fetch_known_model(model, quiet=True)
    gf = read_gguf(path)
    data = np.memmap(path, np.uint8, mode="r")
    checked = set()
    for t in gf.tensors.values():
        if t.qtype not in GROUPED:
            continue
        last_tile = max(0, t.rows - 16 - t.rows % 16)
        for r0, r1 in ((0, min(t.rows, 256)), (last_tile, t.rows)):
            # A writable copy, as the loader packs (a read-only array is another compile).
            raw = np.array(data[t.offset + r0 * t.row_bytes:t.offset + r1 * t.row_bytes])
            np.testing.assert_array_equal(kernels.pack(t.qtype, raw, r1 - r0, t.cols),
                                          reference_pack(t.qtype, raw, r1 - r0, t.cols),
                                          err_msg=f"{t.name} rows {r0}-{r1}")
        checked.add(t.qtype)
    assert checked, "the model has no matrix of a grouped type"
