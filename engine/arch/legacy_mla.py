"""deepseek2 files converted before attn_k_b / attn_v_b existed, run as the newer ones.

Older conversions wrote each layer's kv_b_proj whole: blk.N.attn_kv_b, GGUF shape
[kv_lora_rank, n_head * (nope + v)] (head h's rows: its nope key rows, then its v value
rows), key_length and value_length the heads' sizes, and no _mla keys. llama.cpp still
runs them, decompressing the latent into per-head keys and values (deepseek2.cpp's
non-absorbed path); numallm runs only the absorbed form, the same arithmetic regrouped.
split_kv_b makes such a file what a current converter writes (conversion/deepseek.py):
attn_k_b [nope, kv_lora_rank, n_head], head h's key rows transposed; attn_v_b
[kv_lora_rank, v, n_head], head h's value rows as they are; key_length_mla and
value_length_mla the heads' sizes, key_length and value_length the latent cache's (as
llama.cpp's n_embd_head_k_mla() falls back to key_length for these files).

The two tensors are computed at load, as the weights are read (GGUFFile.derived), one
head range at a time: placement cuts them between heads. attn_v_b keeps attn_kv_b's type
and bytes, its rows being whole rows of attn_kv_b. attn_k_b's rows are columns of
attn_kv_b: a float type is kept (transposing it is exact); a quantized one is
dequantized to F16, whose rounding (2^-11 relative) is far below any quantization's,
where quantizing again would add a second quantization error and F32 would double the
bytes every token reads for no accuracy that matters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
from gguf import GGML_QUANT_SIZES, MODEL_TENSOR, GGMLQuantizationType, Keys
from gguf.quants import dequantize
from numallm.engine.arch.spec import tensor_name
from numallm.engine.gguf_file import GGUFFile, TensorInfo, show_name
from numallm.errors import ModelFormatError, UnsupportedError
from numallm.numa.pages import align_up

_KV_B = re.compile(r"blk\.(\d+)\.attn_kv_b\.weight")
# Float types attn_k_b keeps, by the unsigned integer of their element's size (transposed as such).
_FLOATS = {GGMLQuantizationType.F32: np.uint32, GGMLQuantizationType.F16: np.uint16,
           GGMLQuantizationType.BF16: np.uint16}
# What every refusal of an older file says to do
_RECONVERT = "; convert the model again with a current llama.cpp convert_hf_to_gguf.py (it writes the split tensors)"


def split_kv_b(gf: GGUFFile) -> GGUFFile:
    """`gf` with every attn_kv_b split into attn_k_b and attn_v_b and the _mla keys set,
    if it is such an older file (no _mla keys, attn_kv_b tensors); else `gf` itself.
    Refuses in one line a file whose sizes do not fit its attn_kv_b."""
    md = gf.metadata

    def name(key: str) -> str:
        return key.format(arch=gf.architecture)

    kv_b = {n: int(m.group(1)) for n in gf.tensors if (m := _KV_B.fullmatch(n))}  # name: its layer
    if not kv_b or name(Keys.Attention.KEY_LENGTH_MLA) in md or name(Keys.Attention.VALUE_LENGTH_MLA) in md:
        return gf
    r, n_head, k, v, n_rot = (_size(gf, name(key)) for key in (
        Keys.Attention.KV_LORA_RANK, Keys.Attention.HEAD_COUNT, Keys.Attention.KEY_LENGTH,
        Keys.Attention.VALUE_LENGTH, Keys.Rope.DIMENSION_COUNT))
    if n_rot >= k:
        raise ModelFormatError(f"{gf.path}: {name(Keys.Rope.DIMENSION_COUNT)} {n_rot} leaves no key dimension "
                               f"outside RoPE in {name(Keys.Attention.KEY_LENGTH)} {k}: the file is inconsistent"
                               f"{_RECONVERT}")
    tensors: dict[str, TensorInfo] = {}
    derived = dict(gf.derived)
    # Past the file and its tensors' data (a header-only file for a dry run ends before it)
    offset = align_up(max(gf.file_size, *(t.offset + t.nbytes for t in gf.tensors.values())), gf.alignment)
    for n, t in gf.tensors.items():
        if n not in kv_b:
            tensors[n] = t
            continue
        split = _Split(gf.path, t, n_head, k - n_rot, v)
        split.check()
        for info_at, rows, kind in ((split.k_b, split.k_rows, MODEL_TENSOR.ATTN_K_B),
                                    (split.v_b, split.v_rows, MODEL_TENSOR.ATTN_V_B)):
            info = info_at(tensor_name(kind, kv_b[n]), offset)
            tensors[info.name], derived[info.name] = info, rows
            offset = align_up(offset + info.nbytes, gf.alignment)
    md = {**md, name(Keys.Attention.KEY_LENGTH_MLA): k, name(Keys.Attention.VALUE_LENGTH_MLA): v,
          name(Keys.Attention.KEY_LENGTH): r + n_rot, name(Keys.Attention.VALUE_LENGTH): r}
    return replace(gf, metadata=md, tensors=tensors, derived=derived)


def _size(gf: GGUFFile, key: str) -> int:
    value = gf.metadata.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        found = "missing" if value is None else f"{value!r}"
        raise ModelFormatError(f"{gf.path}: key {key!r} is {found}, but splitting the file's attn_kv_b "
                               "into attn_k_b and attn_v_b needs it as a positive integer" + _RECONVERT)
    return value


@dataclass(frozen=True)
class _Split:
    """One layer's attn_kv_b and the attn_k_b and attn_v_b it splits into."""

    path: str
    kv_b: TensorInfo
    n_head: int
    nope: int
    v: int

    @property
    def k_type(self) -> GGMLQuantizationType:
        return self.kv_b.qtype if self.kv_b.qtype in _FLOATS else GGMLQuantizationType.F16

    def check(self) -> None:
        t, r = self.kv_b, self.kv_b.cols
        if t.shape != (r, self.n_head * (self.nope + self.v)):
            raise ModelFormatError(f"{self.path}: tensor {show_name(t.name)} has shape {list(t.shape)}, expected "
                                   f"[{r}, {self.n_head * (self.nope + self.v)}] (n_head {self.n_head} x (key "
                                   f"{self.nope} + value {self.v}) rows) for this model's hyperparameters{_RECONVERT}")
        try:
            dequantize(np.zeros((1, t.row_bytes), np.uint8), t.qtype)
        except NotImplementedError:
            raise UnsupportedError(f"{self.path}: tensor {show_name(t.name)} is {t.qtype.name}, which numallm "
                                   "cannot split into attn_k_b and attn_v_b" + _RECONVERT) from None

    def k_b(self, name: str, offset: int) -> TensorInfo:
        block, size = GGML_QUANT_SIZES[self.k_type]
        r = self.kv_b.cols
        return TensorInfo(name, self.k_type, (self.nope, r, self.n_head), offset,
                          self.n_head * r * (self.nope // block * size))

    def v_b(self, name: str, offset: int) -> TensorInfo:
        return TensorInfo(name, self.kv_b.qtype, (self.kv_b.cols, self.v, self.n_head), offset,
                          self.n_head * self.v * self.kv_b.row_bytes)

    def _heads(self, h0: int, h1: int) -> np.ndarray:
        """attn_kv_b's bytes of heads [h0, h1): [heads, nope + v, row bytes]."""
        rows, row_bytes = self.nope + self.v, self.kv_b.row_bytes
        count = (h1 - h0) * rows * row_bytes
        data = np.fromfile(self.path, np.uint8, count=count, offset=self.kv_b.offset + h0 * rows * row_bytes)
        if data.size < count:
            raise ModelFormatError(f"{self.path}: the file ends inside tensor {show_name(self.kv_b.name)}: it is "
                                   "truncated (re-download it)")
        return data.reshape(h1 - h0, rows, row_bytes)

    def k_rows(self, lo: int, hi: int) -> np.ndarray:
        """attn_k_b's rows [lo, hi) (kv_lora_rank rows a head)."""
        r = self.kv_b.cols
        h0, h1 = lo // r, -(-hi // r)
        keys = np.ascontiguousarray(self._heads(h0, h1)[:, :self.nope])
        if self.kv_b.qtype in _FLOATS:
            elements = keys.view(_FLOATS[self.kv_b.qtype])  # [heads, nope, r]
        else:
            elements = dequantize(keys, self.kv_b.qtype).astype(np.float16)
        out = np.ascontiguousarray(elements.transpose(0, 2, 1)).view(np.uint8).reshape(-1)
        row_bytes = out.size // ((h1 - h0) * r)
        return out[(lo - h0 * r) * row_bytes:(hi - h0 * r) * row_bytes]

    def v_rows(self, lo: int, hi: int) -> np.ndarray:
        """attn_v_b's rows [lo, hi) (v rows a head)."""
        h0, h1 = lo // self.v, -(-hi // self.v)
        values = self._heads(h0, h1)[:, self.nope:].reshape(-1)  # a copy: the heads' value rows back to back
        row_bytes = self.kv_b.row_bytes
        return values[(lo - h0 * self.v) * row_bytes:(hi - h0 * self.v) * row_bytes]
