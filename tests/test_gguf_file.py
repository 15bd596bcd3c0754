"""The GGUF front door: `read_gguf` and `check_architecture` on real and malformed files.

The real models are cross-checked field by field against `gguf.GGUFReader`. The
malformed files are written byte by byte here (GGUFWriter refuses to write most of
them), each aimed at one check; every failure must be a BadInputError whose message
is one line starting with the path. test_gguf_fuzz runs the crasher corpus through the
CLI (exit status 2); test_cli covers missing, directory and truncated paths.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import GGUFValueType as V
from numallm.engine import gguf_file
from numallm.engine.gguf_file import GGUFFile, TensorInfo, read_gguf
from numallm.engine.model_checks import check_architecture
from numallm.engine.model_store import fetch_known_model
from numallm.errors import BadInputError, ModelFormatError, UnsupportedError

# -- a byte-level GGUF writer ------------------------------------------------------------


def gstr(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, V.UINT32, struct.pack("<I", value))


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, V.STRING, gstr(value))


def kv_strings(key: str, values: list[bytes]) -> bytes:
    return kv(key, V.ARRAY, struct.pack("<IQ", V.STRING, len(values)) + b"".join(gstr(v) for v in values))


def tinfo(name: str | bytes, shape: tuple[int, ...], qtype: int, offset: int) -> bytes:
    return (gstr(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
            + struct.pack("<IQ", qtype, offset))


def gguf_bytes(kvs: list[bytes], infos: list[bytes], data_size: int, *, version: int = 3,
               n_kv: int | None = None, n_tensors: int | None = None, alignment: int = 32) -> bytes:
    head = (b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                  len(kvs) if n_kv is None else n_kv)
            + b"".join(kvs) + b"".join(infos))
    head += bytes(-len(head) % alignment)
    return head + bytes(data_size)


TOKENS = [b"<unk>", b"<s>", b"</s>", b"a", b"b", b"\xff", b"hello world", b"\n"]
N_EMBD = 8


def tiny_model(extra_kvs: tuple[bytes, ...] = ()) -> tuple[list[bytes], list[bytes], int]:
    """A valid, minimal llama file: all of check_architecture's keys and token_embd."""
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1),
           kv_u32("llama.embedding_length", N_EMBD), kv_u32("llama.feed_forward_length", 16),
           kv_u32("llama.attention.head_count", 2), kv_u32("llama.attention.head_count_kv", 1),
           kv("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, struct.pack("<f", 1e-5)),
           kv_str("tokenizer.ggml.model", "llama"), kv_strings("tokenizer.ggml.tokens", TOKENS),
           kv("tokenizer.ggml.scores", V.ARRAY, struct.pack("<IQ", V.FLOAT32, len(TOKENS))
              + np.arange(len(TOKENS), dtype="<f4").tobytes()),
           kv_u32("tokenizer.ggml.eos_token_id", 2), *extra_kvs]
    embd_bytes = N_EMBD * len(TOKENS) * 4
    infos = [tinfo("token_embd.weight", (N_EMBD, len(TOKENS)), T.F32, 0),
             tinfo("output_norm.weight", (N_EMBD,), T.F32, embd_bytes)]
    return kvs, infos, embd_bytes + N_EMBD * 4


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def error_of(path: str, exc: type[BaseException] = ModelFormatError) -> str:
    """read_gguf's error message on `path`, checked to be one line naming the file."""
    with pytest.raises(exc) as info:
        check_architecture(read_gguf(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


# -- real models: the same answers as gguf.GGUFReader -----------------------------------


def _reader_value(field: Any) -> Any:
    value = field.contents()
    if field.types[0] == V.ARRAY and field.types[-1] != V.STRING:
        return np.array(value, dtype=GGUFReader.gguf_scalar_to_np[field.types[-1]])
    return value


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_matches_gguf_reader(name: str) -> None:
    path = fetch_known_model(name)
    gf = read_gguf(path)
    reader = GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(gf.metadata) == list(fields)
    for key, field in fields.items():
        ours, theirs = gf.metadata[key], _reader_value(field)
        if isinstance(theirs, np.ndarray):
            assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype, key
            np.testing.assert_array_equal(ours, theirs, err_msg=key)
        else:
            assert type(ours) is type(theirs) and ours == theirs, key
    assert list(gf.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = gf.tensors[t.name]
        assert (info.qtype, info.shape, info.offset, info.nbytes) == \
            (t.tensor_type, tuple(int(d) for d in t.shape), t.data_offset, t.n_bytes), t.name
        assert info.rows * info.row_bytes == info.nbytes
    assert gf.version == 3 and gf.alignment == 32 and gf.file_size == os.path.getsize(path)
    assert gf.data_offset == reader.tensors[0].data_offset
    check_architecture(gf)


# -- a valid tiny file -------------------------------------------------------------------


def test_tiny_file_round_trips(tmp_path: Path) -> None:
    kvs, infos, data_size = tiny_model(extra_kvs=(
        kv("general.alignment", V.UINT32, struct.pack("<I", 64)),
        kv("x.i8", V.INT8, struct.pack("<b", -5)), kv("x.u64", V.UINT64, struct.pack("<Q", 1 << 63)),
        kv("x.f64", V.FLOAT64, struct.pack("<d", math.pi)), kv("x.bool", V.BOOL, b"\x01"),
        kv("x.empty", V.ARRAY, struct.pack("<IQ", V.INT32, 0)),
    ))
    path = write(tmp_path, gguf_bytes(kvs, infos, data_size, alignment=64))
    gf = read_gguf(path)
    md = gf.metadata
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 1
    assert (md["x.i8"], md["x.u64"], md["x.f64"], md["x.bool"]) == (-5, 1 << 63, math.pi, True)
    assert md["x.empty"].dtype == np.int32 and md["x.empty"].size == 0
    np.testing.assert_array_equal(md["tokenizer.ggml.scores"], np.arange(len(TOKENS), dtype=np.float32))
    # A byte token that is not UTF-8 on its own keeps its exact bytes.
    assert [t.encode("utf-8", "surrogateescape") for t in md["tokenizer.ggml.tokens"]] == TOKENS
    assert gf.alignment == 64 and gf.data_offset % 64 == 0
    embd = gf.tensors["token_embd.weight"]
    assert (embd.offset, embd.nbytes, embd.rows, embd.cols, embd.row_bytes) == \
        (gf.data_offset, N_EMBD * len(TOKENS) * 4, len(TOKENS), N_EMBD, N_EMBD * 4)
    assert gf.tensors["output_norm.weight"].offset == gf.data_offset + embd.nbytes
    check_architecture(gf)
    # The byte-level writer agrees with gguf's own reader.
    reader = GGUFReader(path)
    assert [(t.name, t.data_offset) for t in reader.tensors] == \
        [(n, t.offset) for n, t in gf.tensors.items()]


@pytest.mark.parametrize("odd", [b"a\x00b", b"\xe2\x82", b"", b"\x00"], ids=["nul", "cut-utf8", "empty", "only-nul"])
def test_string_arrays_keep_every_byte(tmp_path: Path, odd: bytes) -> None:
    """String arrays are decoded in one piece, split on each length's zero top byte: a
    string holding a NUL (the split miscounts: each is decoded alone), a cut UTF-8
    sequence or an empty string must still come back byte for byte."""
    values = [b"x", odd, b"\xff\xfe", odd, "\u00e9t\u00e9".encode(), b"z"]
    kvs, infos, data_size = tiny_model(extra_kvs=(kv_strings("x.strings", values),))
    md = read_gguf(write(tmp_path, gguf_bytes(kvs, infos, data_size))).metadata
    assert [v.encode("utf-8", "surrogateescape") for v in md["x.strings"]] == values


def test_every_truncation_of_a_valid_file_is_a_clean_error(tmp_path: Path) -> None:
    kvs, infos, data_size = tiny_model()
    data = gguf_bytes(kvs, infos, data_size)
    for cut in range(len(data)):
        path = write(tmp_path, data[:cut])
        msg = error_of(path)
        assert ("truncated" in msg or "not a GGUF file" in msg), msg


# -- paths that are not GGUF files -------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    assert error_of(str(tmp_path / "nope.gguf"), BadInputError).endswith("no such file")


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in error_of(str(tmp_path), BadInputError)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    assert "not a regular file" in error_of(str(fifo), BadInputError)


@pytest.mark.parametrize("data", [b"", b"GGUF", b"hello, this is a text file\n" * 3],
                         ids=["empty", "magic-only", "text"])
def test_not_gguf(tmp_path: Path, data: bytes) -> None:
    assert "not a GGUF file" in error_of(write(tmp_path, data))


# -- malformed containers: one case per check --------------------------------------------


def _with_kvs(*extra: bytes, **kw: Any) -> bytes:
    kvs, infos, data_size = tiny_model(extra_kvs=extra)
    return gguf_bytes(kvs, infos, data_size, **kw)


def _with_tensor(info: bytes, data_size: int = 4096) -> bytes:
    kvs, infos, _ = tiny_model()
    return gguf_bytes(kvs, infos + [info], data_size)


HUGE = (1 << 64) - 1
MALFORMED: dict[str, tuple[bytes, str]] = {
    "bad-magic": (b"GGML" + _with_kvs()[4:], "not a GGUF file (magic b'GGML'"),
    "version-1": (_with_kvs(version=1), "unsupported GGUF version 1 (supported: 2, 3) (at byte 4)"),
    "big-endian": (_with_kvs(version=3 << 16), "big-endian GGUF files are not supported"),
    "tensor-count-limit": (_with_kvs(n_tensors=HUGE), f"tensor count {HUGE} is over the limit"),
    "kv-count-limit": (_with_kvs(n_kv=1 << 20), "metadata count 1048576 is over the limit"),
    "counts-beyond-file": (_with_kvs(n_kv=5000), "truncated or corrupt file: a table of 5000 metadata entries and 2 tensors needs 65064 bytes"),
    "key-length-limit": (_with_kvs(struct.pack("<Q", HUGE)), "metadata key has length 18446744073709551615, over the limit"),
    "empty-key": (_with_kvs(kv("", V.UINT8, b"\x00")), "empty metadata key"),
    "string-beyond-file": (_with_kvs(kv("k", V.STRING, struct.pack("<Q", 1 << 20))),
                           "value of 'k' needs 1048576 bytes"),
    "string-limit": (_with_kvs(kv("k", V.STRING, struct.pack("<Q", 1 << 40))), "value of 'k' has length 1099511627776, over the limit"),
    "unknown-value-type": (_with_kvs(kv("k", 99, b"")), "unknown value type 99 for type of 'k'"),
    "unknown-element-type": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", 77, 1))), "unknown value type 77 for element type of 'k'"),
    "nested-array": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", V.ARRAY, 1))), "nested arrays are not supported ('k')"),
    "array-limit": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", V.UINT8, HUGE))), "array 'k' has 18446744073709551615 elements, over the limit"),
    "string-array-limit": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 1 << 30))), "array 'k' has 1073741824 elements, over the limit"),
    "array-beyond-file": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", V.UINT64, 1 << 20))), "truncated or corrupt file: array 'k' of 1048576 elements needs 8388608 bytes"),
    "string-array-beyond-file": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 1 << 20))), "truncated or corrupt file: array 'k' of 1048576 strings needs 8388608 bytes"),
    "string-element-beyond-file": (_with_kvs(kv("k", V.ARRAY, struct.pack("<IQQ", V.STRING, 1, 1 << 20))), "truncated or corrupt file: element 0 of 'k' needs 1048576 bytes"),
    "duplicate-key": (_with_kvs(kv_u32("llama.block_count", 2)), "duplicate metadata key 'llama.block_count'"),
    "newline-in-key": (_with_kvs(kv_u32("a\nb", 1), kv_u32("a\nb", 1)), "duplicate metadata key 'a\\nb'"),
    "alignment-zero": (_with_kvs(kv_u32("general.alignment", 0)), "general.alignment 0 is not a power of two"),
    "alignment-three": (_with_kvs(kv_u32("general.alignment", 3)), "general.alignment 3 is not a power of two"),
    "alignment-huge": (_with_kvs(kv("general.alignment", V.UINT64, struct.pack("<Q", 1 << 40))), "general.alignment 1099511627776 is not a power of two from 1 to"),
    "alignment-bool": (_with_kvs(kv("general.alignment", V.BOOL, b"\x01")), "general.alignment True is not"),
    "alignment-string": (_with_kvs(kv_str("general.alignment", "32")), "general.alignment '32' is not"),
    "tensor-name-limit": (_with_tensor(tinfo("x" * 65, (32,), T.F32, 64)), "tensor name has length 65, over the limit of 64"),
    "empty-tensor-name": (_with_tensor(tinfo("", (32,), T.F32, 64)), "empty tensor name"),
    "zero-dims": (_with_tensor(tinfo("t", (), T.F32, 64)), "tensor 't' has 0 dimensions (1 to 4 allowed)"),
    "five-dims": (_with_tensor(tinfo("t", (1, 1, 1, 1, 1), T.F32, 64)), "tensor 't' has 5 dimensions"),
    "empty-dim": (_with_tensor(tinfo("t", (32, 0), T.F32, 64)), "tensor 't' has an empty dimension [32, 0]"),
    "unknown-tensor-type": (_with_tensor(tinfo("t", (32,), 99, 64)), "tensor 't' has unknown type code 99"),
    "partial-block": (_with_tensor(tinfo("t", (33,), T.Q4_0, 64)), "tensor 't' row length 33 is not a multiple of Q4_0's block size 32"),
    "partial-superblock": (_with_tensor(tinfo("t", (288, 2), T.IQ2_XXS, 64)), "tensor 't' row length 288 is not a multiple of IQ2_XXS's block size 256"),
    "unaligned-offset": (_with_tensor(tinfo("t", (32,), T.F32, 300)), "tensor 't' offset 300 is not aligned to 32"),
    "tensor-beyond-file": (_with_tensor(tinfo("t", (1 << 20, 1 << 20), T.F32, 512)), "truncated file: tensor 't' needs bytes"),
    "huge-dims": (_with_tensor(tinfo("t", (HUGE, HUGE, HUGE, HUGE), T.F32, 512)), "truncated file: tensor 't' needs bytes"),
    "overlap": (_with_tensor(tinfo("t", (32,), T.F32, 0)), "tensors 'token_embd.weight' and 't' overlap"),
    "duplicate-tensor": (_with_tensor(tinfo("output_norm.weight", (8,), T.F32, 512)), "duplicate tensor name 'output_norm.weight'"),
    "newline-in-tensor-name": (_with_tensor(tinfo("a\r\nb", (32,), T.F32, 300)), "tensor 'a\\r\\nb' offset 300"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_file(tmp_path: Path, case: str) -> None:
    data, expected = MALFORMED[case]
    msg = error_of(write(tmp_path, data))
    assert expected in msg and "(at byte " in msg, msg


def test_header_size_is_bounded_even_in_a_huge_sparse_file(tmp_path: Path) -> None:
    path = write(tmp_path, _with_kvs(kv("k", V.ARRAY, struct.pack("<IQ", V.UINT64, 1 << 24))))
    os.truncate(path, 1 << 30)  # sparse: the array's 128 MiB "fit" in the file
    msg = error_of(path)
    assert "array 'k' of 16777216 elements needs 134217728 bytes, which would take the header " \
        f"past the limit of {gguf_file.MAX_HEADER_BYTES} bytes" in msg


def test_where_is_the_byte_offset_of_the_bad_entry(tmp_path: Path) -> None:
    kvs, infos, _ = tiny_model()
    data = gguf_bytes(kvs, infos + [tinfo("t", (32,), 99, 512)], 4096)
    at = data.index(gstr("t") + struct.pack("<I", 1))
    assert error_of(write(tmp_path, data)).endswith(f"(at byte {at})")


def test_long_names_are_shortened_in_errors(tmp_path: Path) -> None:
    key = "k" * 5000
    msg = error_of(write(tmp_path, _with_kvs(kv_u32(key, 1), kv_u32(key, 1))))
    assert len(msg) < 300 and f"'{'k' * gguf_file._SHOWN_NAME_LEN}'..." in msg


# -- architecture checks -----------------------------------------------------------------

REQUIRED_KEYS = ["general.architecture", "llama.block_count", "llama.embedding_length",
                 "llama.feed_forward_length", "llama.attention.head_count",
                 "tokenizer.ggml.model", "tokenizer.ggml.tokens"]


def model_file(metadata: dict[str, Any], embd_shape: tuple[int, ...] | None = None) -> GGUFFile:
    """A parsed file as read_gguf returns it, with only the embedding tensor (of the
    shape the metadata asks for unless `embd_shape` is given)."""
    shape = embd_shape or (metadata[f"{metadata['general.architecture']}.embedding_length"],
                           len(metadata["tokenizer.ggml.tokens"]))
    tensors = {"token_embd.weight": TensorInfo("token_embd.weight", T.F32, shape, 96, 4 * math.prod(shape))}
    return GGUFFile(path="model.gguf", version=3, metadata=metadata, tensors=tensors,
                    alignment=32, data_offset=96, file_size=96 + tensors["token_embd.weight"].nbytes)


def llama_md(**changes: Any) -> dict[str, Any]:
    md: dict[str, Any] = {
        "general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
        "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.context_length": 2048,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "c", "d"],
        "tokenizer.ggml.token_type": np.ones(4, np.int32), "tokenizer.ggml.eos_token_id": 3,
    }
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            md.pop(key)
        else:
            md[key] = value
    return md


def arch_error(gf: GGUFFile, exc: type[Exception] = ModelFormatError) -> str:
    with pytest.raises(exc) as info:
        check_architecture(gf)
    msg = str(info.value)
    assert msg.startswith("model.gguf: ") and "\n" not in msg, msg
    return msg


def test_valid_metadata_passes() -> None:
    check_architecture(model_file(llama_md()))
    # Like llama.cpp, accept what the tokenizer tolerates: an out-of-range special id
    # (ignored) and per-token arrays longer than the vocabulary (cut).
    check_architecture(model_file(llama_md(tokenizer__ggml__eos_token_id=1 << 31,
                                           tokenizer__ggml__token_type=np.ones(5, np.int32))))
    gemma = {k.replace("llama.", "gemma3."): v for k, v in llama_md().items()}
    gemma.update({"general.architecture": "gemma3", "gemma3.embedding_length": 50,
                  "gemma3.attention.key_length": 256, "gemma3.attention.sliding_window": 512})
    check_architecture(model_file(gemma))  # key_length frees embedding_length from head_count


def test_unsupported_architecture() -> None:
    msg = arch_error(model_file(llama_md(general__architecture="xyz"), (64, 4)), UnsupportedError)
    assert msg == "model.gguf: architecture 'xyz' is not supported (supported: llama, gemma3, qwen2, qwen3, qwen3moe, glm4moe, deepseek2)"


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key_is_named(key: str) -> None:
    md = llama_md()
    del md[key]
    assert f"required key {key!r} is missing" in arch_error(model_file(md, (64, 4)))


@pytest.mark.parametrize("value", ["4", np.array([4, 4], np.uint32), True, 4.0],
                         ids=["string", "array", "bool", "float"])
def test_mistyped_integer_key_is_named(value: Any) -> None:
    msg = arch_error(model_file(llama_md(llama__attention__head_count=value)))
    assert "key 'llama.attention.head_count' should be an integer" in msg


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("llama.block_count", 0, "key 'llama.block_count' is 0, outside the sane range"),
    ("llama.embedding_length", 1 << 40, "key 'llama.embedding_length' is 1099511627776"),
    ("llama.context_length", 0, "key 'llama.context_length' is 0"),
    ("llama.attention.head_count_kv", 3, "head_count 4 is not a multiple of llama.attention.head_count_kv 3"),
    ("llama.attention.head_count", 6, "llama.embedding_length 64 is not a multiple of llama.attention.head_count 6"),
    ("llama.rope.dimension_count", 17, "llama.rope.dimension_count 17 should be even and at most the head size 16"),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), "'llama.attention.layer_norm_rms_epsilon' is nan"),
    ("llama.attention.layer_norm_rms_epsilon", -1e-5, "layer_norm_rms_epsilon' is -1e-05"),
    ("llama.rope.freq_base", "10000", "key 'llama.rope.freq_base' should be a number, found a string"),
    ("llama.vocab_size", 5, "llama.vocab_size is 5 but tokenizer.ggml.tokens has 4 tokens"),
    ("tokenizer.ggml.model", np.zeros(3, np.uint8), "key 'tokenizer.ggml.model' should be a tokenizer name"),
    ("tokenizer.ggml.tokens", np.zeros(4, np.int32), "key 'tokenizer.ggml.tokens' should be a non-empty array of strings"),
    ("tokenizer.ggml.token_type", np.ones(3, np.int32), "key 'tokenizer.ggml.token_type' has 3 entries"),
    ("tokenizer.ggml.scores", ["x"] * 4, "key 'tokenizer.ggml.scores' should be a numeric array"),
    ("tokenizer.ggml.merges", np.zeros(2, np.int32), "key 'tokenizer.ggml.merges' should be an array of strings"),
    ("tokenizer.ggml.eos_token_id", np.array([1, 2], np.uint32), "key 'tokenizer.ggml.eos_token_id' should be a token id, found an array of 2"),
    ("tokenizer.ggml.bos_token_id", 1.0, "key 'tokenizer.ggml.bos_token_id' should be a token id, found the float 1.0"),
    ("llama.final_logit_softcapping", float("inf"), "key 'llama.final_logit_softcapping' is inf"),
])
def test_bad_value_is_named(key: str, value: Any, expected: str) -> None:
    md = llama_md()
    md[key] = value
    assert expected in arch_error(model_file(md, (64, 4)))


def test_gpt2_vocabulary_must_be_utf8() -> None:
    # Byte tokens read from the file keep their bytes as surrogates (see read_gguf).
    bad = b"\xdc".decode("utf-8", "surrogateescape")
    msg = arch_error(model_file(llama_md(tokenizer__ggml__tokens=["a", "b", bad, "d"])))
    assert "entry 2 of 'tokenizer.ggml.tokens' is not valid UTF-8" in msg
    msg = arch_error(model_file(llama_md(tokenizer__ggml__merges=["a b", "c" + bad])))
    assert "entry 1 of 'tokenizer.ggml.merges' is not valid UTF-8" in msg
    # SentencePiece vocabularies may hold such pieces: accepted.
    check_architecture(model_file(llama_md(tokenizer__ggml__model="llama",
                                           tokenizer__ggml__tokens=["a", "b", bad, "d"])))


def test_vocabulary_must_match_the_embedding() -> None:
    msg = arch_error(model_file(llama_md(), (64, 5)))
    assert "tensor 'token_embd.weight' has shape [64, 5], expected [64, 4]" in msg
    assert "tokenizer.ggml.tokens" in msg and "llama.embedding_length" in msg
    gf = model_file(llama_md())
    del gf.tensors["token_embd.weight"]
    assert "required tensor 'token_embd.weight' is missing" in arch_error(gf)
