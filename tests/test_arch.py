"""The architecture descriptions (engine/arch): built from gguf's constants, agreeing
with HParams and with model_checks, so that a registered architecture cannot end in a
KeyError; and the slot tables as the placement path reads them, without compiling."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from gguf import MODEL_ARCH_NAMES, MODEL_TENSORS, Keys
from numallm.engine.arch import ARCHITECTURES, describe
from numallm.engine.arch.slots import LayerMatrix, MatrixEntry, MatrixTable, ModelMatrix
from numallm.engine.arch.spec import HParams
from numallm.engine.model_checks import check_architecture
from numallm.engine.placement_inputs import forward_matrices
from test_gguf_file import model_file

# Values for the keys a file must have, by HParams field.
REQUIRED = {"n_layer": 2, "n_embd": 64, "n_ff": 128, "n_head": 4, "n_expert": 4, "n_expert_used": 2, "n_ff_exp": 32,
            "n_expert_shared": 1, "kv_lora_rank": 16, "head_dim": 16, "head_dim_v": 16}
# deepseek2's RoPE covers part of a head (the file always says how much), and its
# heads' size is key_length_mla (key_length is the latent cache's).
ROPE_DIMS = {"deepseek2": 8}
HEAD_SIZE_KEY = {"deepseek2": "attention.key_length_mla"}


def _key_templates(group: type = Keys) -> set[str]:
    """Every metadata key name gguf defines."""
    out = set()
    for value in vars(group).values():
        if isinstance(value, str):
            out.add(value)
        elif isinstance(value, type):
            out |= _key_templates(value)
    return out


def _minimal_md(name: str) -> dict[str, Any]:
    arch = ARCHITECTURES[name]
    md: dict[str, Any] = {"general.architecture": name, "tokenizer.ggml.model": "gpt2",
                          "tokenizer.ggml.tokens": ["a", "b", "c", "d"]}
    for key in arch.keys:
        if key.required:
            md[arch.key_name(key)] = REQUIRED[key.field]
    if name in ROPE_DIMS:
        md[f"{name}.rope.dimension_count"] = ROPE_DIMS[name]
    return md


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_descriptions_use_gguf_constants_and_hparams_fields(name: str) -> None:
    arch = ARCHITECTURES[name]
    assert MODEL_ARCH_NAMES[arch.arch] == name
    assert {*arch.matrices.values(), *arch.vectors.values(), *arch.optional_vectors.values(),
            *arch.expert_matrices.values(), *arch.shared_expert_matrices.values(), *arch.expert_vectors.values(),
            *arch.optional_expert_vectors.values()} \
        <= set(MODEL_TENSORS[arch.arch])
    assert {key.name for key in arch.keys} | set(arch.refused_keys) <= _key_templates()
    assert len({key.name for key in arch.keys}) == len(arch.keys)
    fields = {key.field for key in arch.keys if key.field is not None}
    assert fields | set(arch.fixed) <= set(HParams._fields)
    assert all(key.field in REQUIRED for key in arch.keys if key.required)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_minimal_file_is_checked_and_described_with_the_defaults(name: str) -> None:
    arch = ARCHITECTURES[name]
    md = _minimal_md(name)
    check_architecture(model_file(md))
    hp = describe(md, "model.gguf").hparams
    assert (hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head) == (2, 64, 128, 4)
    # llama.cpp's rules for what the file leaves out
    assert (hp.n_head_kv, hp.head_dim, hp.n_rot, hp.n_vocab) == (arch.fixed.get("n_head_kv", 4), 16,
                                                                 ROPE_DIMS.get(name, 16), 4)
    assert hp.attn_scale == 0.25
    for key in arch.keys:
        if key.default is not None and key.field not in arch.fixed:
            assert getattr(hp, key.field) == key.default, key.name
    assert all(getattr(hp, f) == v for f, v in arch.fixed.items())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_file_values_override_the_defaults(name: str) -> None:
    arch = ARCHITECTURES[name]
    md = _minimal_md(name) | {f"{name}.rope.freq_base": 5000.0, f"{name}.attention.head_count_kv": 2,
                              f"{name}.{HEAD_SIZE_KEY.get(name, 'attention.key_length')}": 32}
    check_architecture(model_file(md))
    hp = describe(md, "model.gguf").hparams
    assert (hp.rope_base, hp.n_head_kv, hp.head_dim, hp.n_rot) == (5000.0, arch.fixed.get("n_head_kv", 2), 32,
                                                                   ROPE_DIMS.get(name, 32))
    assert hp.rope_base_local == arch.fixed.get("rope_base_local", 5000.0)


def test_an_empty_slot_is_no_matrix_to_place() -> None:
    # A layer without a dense FFN (as a mixture-of-experts layer will be) leaves its
    # gate, up and down slots empty.
    layer = MatrixTable.empty((2, len(LayerMatrix)))
    for il in range(2):
        for m in LayerMatrix:
            if m > LayerMatrix.DOWN:
                continue  # no experts here
            if il == 1 or m not in (LayerMatrix.GATE, LayerMatrix.UP, LayerMatrix.DOWN):
                layer.put((il, m), MatrixEntry(0, 32, 64, 1000 * (il * 7 + m), 32 * 40, 16))
    model = MatrixTable.empty((len(ModelMatrix),))
    for m in ModelMatrix:
        model.put(m, MatrixEntry(0, 50, 64, 90_000, 50 * 40, 1))
    names = [m.name for m in forward_matrices(layer, model)]
    assert names == ["blk.0.q", "blk.0.k", "blk.0.v", "blk.0.o", "blk.1.q", "blk.1.k", "blk.1.v", "blk.1.o",
                     "blk.1.gate", "blk.1.up", "blk.1.down", "output"]
    assert layer.entry((1, LayerMatrix.UP)) == MatrixEntry(0, 32, 64, 12_000, 1280, 16)
    assert np.all(layer.nbytes[0, LayerMatrix.GATE:] == 0)


def test_planning_placement_imports_no_compiled_code() -> None:
    code = ("import sys, numallm.engine.placement_inputs; "
            "print(sorted(m for m in sys.modules if m.startswith(('numallm.kernels', 'numallm.engine.forward'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
