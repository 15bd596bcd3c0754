"""Header-only GGUFs of real large models: the metadata and tensor table of the real
files (names, shapes, types), and no tensor data, so a file is a few hundred KB.

For `numallm placement --dry-run`, which plans from the tensor table alone. Shapes follow
the models' published configs (config.json on Hugging Face) as llama.cpp's converter
writes them (convert_hf_to_gguf.py; llama-model.cpp's tensor shapes); no vocabulary is
written (the planner does not read it).

    python3 tests/large_shapes.py qwen3-235b-a22b OUT.gguf [--type Q4_K]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType
# (name, shape in GGUF order: row length first, type); vectors and routers stay F32 as in real files
Tensor = tuple[str, tuple[int, ...], GGMLQuantizationType]


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _fit(qtype: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """The type llama-quantize gives a row of `cols`: the asked one, or Q8_0 when the row is
    not a whole number of its blocks (attn_k_b's 128-wide rows under a K-quant)."""
    return qtype if cols % GGML_QUANT_SIZES[qtype][0] == 0 else Q.Q8_0


def _ends(d: int, vocab: int, wtype: GGMLQuantizationType) -> Iterator[Tensor]:
    """The tensors outside the layers: embeddings, final norm, untied output projection."""
    yield "token_embd.weight", (d, vocab), wtype
    yield "output_norm.weight", (d,), Q.F32
    yield "output.weight", (d, vocab), wtype


def qwen3_235b_a22b(wtype: GGMLQuantizationType) -> tuple[str, dict[str, object], list[Tensor]]:
    """Qwen/Qwen3-235B-A22B: 94 layers, hidden 4096, 64 query / 4 KV heads of 128, 128
    experts (8 used) of width 1536, vocabulary 151936, untied output."""
    n_layer, d, n_head, n_kv, hd, n_exp, used, ff_exp, vocab = 94, 4096, 64, 4, 128, 128, 8, 1536, 151936
    md = {"block_count": n_layer, "context_length": 40960, "embedding_length": d, "feed_forward_length": 12288,
          "attention.head_count": n_head, "attention.head_count_kv": n_kv, "attention.key_length": hd,
          "attention.value_length": hd, "rope.freq_base": 1_000_000.0, "attention.layer_norm_rms_epsilon": 1e-6,
          "expert_count": n_exp, "expert_used_count": used, "expert_feed_forward_length": ff_exp,
          "vocab_size": vocab}

    def tensors() -> Iterator[Tensor]:
        yield from _ends(d, vocab, wtype)
        for i in range(n_layer):
            b = f"blk.{i}."
            yield b + "attn_norm.weight", (d,), Q.F32
            yield b + "attn_q.weight", (d, n_head * hd), wtype
            yield b + "attn_k.weight", (d, n_kv * hd), wtype
            yield b + "attn_v.weight", (d, n_kv * hd), wtype
            yield b + "attn_output.weight", (n_head * hd, d), wtype
            yield b + "attn_q_norm.weight", (hd,), Q.F32
            yield b + "attn_k_norm.weight", (hd,), Q.F32
            yield b + "ffn_norm.weight", (d,), Q.F32
            yield b + "ffn_gate_inp.weight", (d, n_exp), Q.F32
            yield b + "ffn_gate_exps.weight", (d, ff_exp, n_exp), wtype
            yield b + "ffn_up_exps.weight", (d, ff_exp, n_exp), wtype
            yield b + "ffn_down_exps.weight", (ff_exp, d, n_exp), wtype
    return "qwen3moe", md, list(tensors())


def deepseek_v3(wtype: GGMLQuantizationType) -> tuple[str, dict[str, object], list[Tensor]]:
    """deepseek-ai/DeepSeek-V3 (671B): 61 layers (the first 3 dense), hidden 7168, 128
    heads of MLA (q_lora_rank 1536, kv_lora_rank 512, 128 + 64 RoPE dims per query and
    key head, 128 per value head) in the split attn_k_b / attn_v_b form newer files carry,
    256 routed experts (8 used) of width 2048 plus one shared, sigmoid routing with a bias
    over 8 groups (4 used), vocabulary 129280, untied output; the NextN layer is left out."""
    n_layer, dense, d, n_head, ff, n_exp, used, ff_exp, vocab = 61, 3, 7168, 128, 18432, 256, 8, 2048, 129280
    q_rank, kv_rank, nope, rope, v_dim = 1536, 512, 128, 64, 128
    md = {"block_count": n_layer, "context_length": 163840, "embedding_length": d, "feed_forward_length": ff,
          "attention.head_count": n_head, "attention.head_count_kv": 1, "attention.key_length": kv_rank + rope,
          "attention.value_length": kv_rank, "attention.key_length_mla": nope + rope,
          "attention.value_length_mla": v_dim, "attention.q_lora_rank": q_rank, "attention.kv_lora_rank": kv_rank,
          "rope.dimension_count": rope, "rope.freq_base": 10000.0, "attention.layer_norm_rms_epsilon": 1e-6,
          "leading_dense_block_count": dense, "expert_count": n_exp, "expert_used_count": used,
          "expert_shared_count": 1, "expert_feed_forward_length": ff_exp, "expert_weights_scale": 2.5,
          "expert_weights_norm": True, "expert_gating_func": 2, "expert_group_count": 8,
          "expert_group_used_count": 4, "rope.scaling.type": "yarn", "rope.scaling.factor": 40.0,
          "rope.scaling.original_context_length": 4096, "rope.scaling.yarn_log_multiplier": 0.1,
          "vocab_size": vocab}

    def tensors() -> Iterator[Tensor]:
        yield from _ends(d, vocab, wtype)
        for i in range(n_layer):
            b = f"blk.{i}."
            yield b + "attn_norm.weight", (d,), Q.F32
            yield b + "attn_q_a_norm.weight", (q_rank,), Q.F32
            yield b + "attn_kv_a_norm.weight", (kv_rank,), Q.F32
            yield b + "attn_q_a.weight", (d, q_rank), wtype
            yield b + "attn_q_b.weight", (q_rank, n_head * (nope + rope)), wtype
            yield b + "attn_kv_a_mqa.weight", (d, kv_rank + rope), wtype
            yield b + "attn_k_b.weight", (nope, kv_rank, n_head), _fit(wtype, nope)
            yield b + "attn_v_b.weight", (kv_rank, v_dim, n_head), wtype
            yield b + "attn_output.weight", (n_head * v_dim, d), wtype
            yield b + "ffn_norm.weight", (d,), Q.F32
            if i < dense:
                yield b + "ffn_gate.weight", (d, ff), wtype
                yield b + "ffn_up.weight", (d, ff), wtype
                yield b + "ffn_down.weight", (ff, d), wtype
                continue
            yield b + "ffn_gate_inp.weight", (d, n_exp), Q.F32
            yield b + "exp_probs_b.bias", (n_exp,), Q.F32
            yield b + "ffn_gate_exps.weight", (d, ff_exp, n_exp), wtype
            yield b + "ffn_up_exps.weight", (d, ff_exp, n_exp), wtype
            yield b + "ffn_down_exps.weight", (ff_exp, d, n_exp), wtype
            yield b + "ffn_gate_shexp.weight", (d, ff_exp), wtype
            yield b + "ffn_up_shexp.weight", (d, ff_exp), wtype
            yield b + "ffn_down_shexp.weight", (ff_exp, d), wtype
    return "deepseek2", md, list(tensors())


MODELS = {"qwen3-235b-a22b": qwen3_235b_a22b, "deepseek-v3": deepseek_v3}


def write_header_only(path: str | os.PathLike[str], model: str, wtype: GGMLQuantizationType = Q.Q4_K) -> Path:
    """Write MODELS[model]'s metadata and tensor table (weights of type `wtype`) to `path`,
    and nothing after it: the file ends where the tensor data would start."""
    arch, md, tensors = MODELS[model](wtype)
    w = GGUFWriter(path, arch)
    w.add_name(f"{model} (header only)")
    for key, value in md.items():
        name = f"{arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(name, value)
        elif isinstance(value, int):
            w.add_uint32(name, value)
        elif isinstance(value, float):
            w.add_float32(name, value)
        else:
            w.add_string(name, str(value))
    for name, shape, qtype in tensors:
        # the writer takes numpy's order (rows last) and writes it reversed, as GGUF wants
        w.add_tensor_info(name, tuple(reversed(shape)), np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return Path(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("out")
    p.add_argument("--type", default="Q4_K", choices=[t.name for t in Q])
    a = p.parse_args()
    print(write_header_only(a.out, a.model, Q[a.type]))


if __name__ == "__main__":
    main()
