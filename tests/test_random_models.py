"""benchmarks/random_models.py: random-weight GGUFs of real shapes for speed measurements."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import random_models as rm  # noqa: E402

from numallm.engine import arch  # noqa: E402
from numallm.engine.gguf_file import read_gguf  # noqa: E402

pytestmark = pytest.mark.model  # the vocabulary is SmolLM2's

TINY = rm.ModelShape("llama", n_layer=8, n_embd=256, n_head=2, n_head_kv=1, head_dim=128, n_ff=512,
                     n_vocab=1000)
TINY_MOE = rm.ModelShape("qwen3moe", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=128, n_ff=768,
                         n_vocab=1000, qk_norm=True, n_expert=4, n_expert_used=2, n_ff_exp=256)
TINY_MLA = rm.ModelShape("deepseek2", n_layer=2, n_embd=256, n_head=2, n_head_kv=1, head_dim=192, n_ff=512,
                         n_vocab=1000, n_expert=4, n_expert_used=2, n_ff_exp=256, n_dense_lead=1,
                         n_expert_shared=2, expert_weights_scale=1.0,
                         mla=rm.LatentAttention(q_lora_rank=0, kv_lora_rank=256, rope_dim=64, v_head_dim=128),
                         yarn=rm.YaRN(factor=40.0, orig_ctx=4096, log_mul=0.0707))


def test_q4_k_m_puts_llama_7b_attn_v_and_ffn_down_in_q6_k_where_llama_cpp_does() -> None:
    # The layers of Llama 2 7B Q4_K_M whose attn_v and ffn_down llama.cpp writes as Q6_K.
    q6 = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    for kind in ("attn_v", "ffn_down"):
        assert [il for il in range(32) if rm.q4_k_m_type(f"blk.{il}.{kind}.weight", 32) == Q.Q6_K] == q6
    assert rm.q4_k_m_type("blk.6.ffn_down_exps.weight", 32) == Q.Q6_K
    assert rm.q4_k_m_type("blk.4.attn_q.weight", 32) == Q.Q4_K
    assert rm.q4_k_m_type("output.weight", 32) == Q.Q6_K
    assert rm.q4_k_m_type("token_embd.weight", 32) == Q.Q4_K


@pytest.mark.parametrize("mix", ["Q4_0", "Q8_0", "Q6_K", "Q4_K_M", "IQ2_XXS", "IQ1_M"])
def test_a_written_file_has_the_shape_types_and_sane_values(tmp_path: Path, mix: str) -> None:
    path = tmp_path / "m.gguf"
    rm.write_model(path, TINY, mix)
    gf = read_gguf(path)
    md = gf.metadata
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 8
    assert len(md["tokenizer.ggml.tokens"]) == TINY.n_vocab
    assert gf.tensors["blk.0.attn_norm.weight"].qtype == Q.F32
    assert path.stat().st_size >= rm.tensor_bytes(TINY, mix)
    for name, t in gf.tensors.items():
        if t.qtype == Q.F32:
            continue
        expected = rm.q4_k_m_type(name, 8) if mix == "Q4_K_M" else rm.SINGLE_TYPES[mix]
        assert t.qtype == expected, name
        raw = np.fromfile(path, np.uint8, count=t.nbytes, offset=t.offset)
        values = quants.dequantize(raw.reshape(-1, t.row_bytes), t.qtype)
        assert np.isfinite(values).all(), name
        rms = float(np.sqrt(np.mean(values.astype(np.float64) ** 2)))
        want = 1.0 if name == "token_embd.weight" else 1 / math.sqrt(values.shape[1])
        assert want / 2 < rms < want * 2, name
        assert abs(float(values.mean())) < 0.2 * rms, name  # centred on 0


def test_the_vocabulary_is_smollm2s_padded_with_unused_tokens() -> None:
    vocab = rm.smollm2_vocabulary(49152 + 8)
    assert vocab.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert vocab.tokens[-8:] == [f"[PAD{i}]" for i in range(49152, 49160)]
    assert vocab.token_types[-1] == 5 and len(vocab.token_types) == 49160  # gguf's TokenType.UNUSED
    assert vocab.keys["tokenizer.ggml.pre"] == "smollm"


def test_the_moe_shape_writes_expert_tensors_and_a_cut_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "moe.gguf"
    rm.write_model(path, TINY_MOE, "Q4_K")
    gf = read_gguf(path)
    md = gf.metadata
    assert md["qwen3moe.expert_count"] == 4 and md["qwen3moe.expert_used_count"] == 2
    assert md["qwen3moe.expert_feed_forward_length"] == 256 and md["qwen3moe.attention.key_length"] == 128
    tokens, merges = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"]
    assert len(tokens) == 1000 and merges and all(m.replace(" ", "", 1) in set(tokens) for m in merges)
    assert gf.tensors["blk.1.ffn_down_exps.weight"].shape == (256, 256, 4)  # ggml order: cols, rows, experts
    assert gf.tensors["blk.1.ffn_gate_inp.weight"].qtype == Q.F32
    assert gf.tensors["blk.0.attn_q_norm.weight"].shape == (128,)


def test_the_mla_shape_writes_deepseek2s_keys_split_kv_b_and_llama_cpps_fallback_types(tmp_path: Path) -> None:
    path = tmp_path / "mla.gguf"
    rm.write_model(path, TINY_MLA, "Q4_K")
    gf = read_gguf(path)
    hp = arch.describe(gf.metadata, str(path)).hparams  # numallm reads it as deepseek2
    assert (hp.kv_lora_rank, hp.q_lora_rank, hp.head_dim, hp.n_rot, hp.head_dim_v) == (256, 0, 192, 64, 128)
    assert (hp.n_layer_dense_lead, hp.n_expert_shared, hp.n_head_kv) == (1, 2, 1)
    assert hp.rope_ext_factor == 1.0 and hp.rope_n_ctx_orig == 4096 and hp.rope_yarn_log_mul == pytest.approx(0.707)
    t = gf.tensors
    assert "blk.0.ffn_gate.weight" in t and "blk.0.ffn_gate_inp.weight" not in t
    assert t["blk.1.ffn_gate_shexp.weight"].shape == (256, 512)  # ggml order: two shared experts of 256
    assert t["blk.1.attn_kv_a_mqa.weight"].shape == (256, 256 + 64)
    # k_b's rows (the nope width, 128) do not split into Q4_K's blocks of 256: Q5_0, as llama-quantize gives.
    assert t["blk.0.attn_k_b.weight"].shape == (128, 256, 2) and t["blk.0.attn_k_b.weight"].qtype == Q.Q5_0
    assert t["blk.0.attn_v_b.weight"].shape == (256, 128, 2) and t["blk.0.attn_v_b.weight"].qtype == Q.Q4_K
    assert path.stat().st_size >= rm.tensor_bytes(TINY_MLA, "Q4_K")


def test_ensure_model_writes_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rm.SHAPES, "tiny-moe", TINY_MOE)
    first = rm.ensure_model("tiny-moe", "Q8_0", n_layer=1, directory=tmp_path)
    assert first.name == "tiny-moe-L1-Q8_0.random.gguf"
    stamp = first.stat().st_mtime_ns
    assert rm.ensure_model("tiny-moe", "Q8_0", n_layer=1, directory=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp and not list(tmp_path.glob("*.partial"))
