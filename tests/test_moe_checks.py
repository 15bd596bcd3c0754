"""A mixture-of-experts file that cannot be run is refused before any weight is read:
one line naming the file and the key or tensor, exit status 2 on the command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from synthetic import write_tiny_llama
from synthetic_deepseek import write_tiny_glm4moe
from test_cli import numallm, one_error_line

from numallm.engine.arch import describe
from numallm.engine.engine import Engine
from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_checks import check_architecture
from numallm.engine.weights import check_model
from numallm.errors import ModelFormatError


def _drop(name: str) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda tensors: tensors.pop(name)


def _keep_experts(name: str, n: int) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[name] = tensors[name][:n]
    return edit


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "no expert used": (dict(n_expert_used=0), "'llama.expert_used_count' is 0, expected 1..4"),
    "more used than there are": (dict(n_expert_used=5), "'llama.expert_used_count' is 5, expected 1..4"),
    "missing expert tensor": (dict(edit=_drop("blk.1.ffn_up_exps.weight")),
                              "required tensor 'blk.1.ffn_up_exps.weight' is missing"),
    "missing router": (dict(edit=_drop("blk.0.ffn_gate_inp.weight")),
                       "required tensor 'blk.0.ffn_gate_inp.weight' is missing"),
    "an expert short": (dict(edit=_keep_experts("blk.0.ffn_down_exps.weight", 3)),
                        "tensor 'blk.0.ffn_down_exps.weight' has shape [128, 64, 3], expected [128, 64, 4]"),
    "router of the wrong size": (dict(edit=_keep_experts("blk.1.ffn_gate_inp.weight", 3)),
                                 "tensor 'blk.1.ffn_gate_inp.weight' has shape [64, 3], expected [64, 4]"),
    "experts not whole tiles": (dict(n_ff=40, type_overrides={"ffn_down_exps": T.F32}),
                                "tensor 'blk.0.ffn_gate_exps.weight' has 40 rows per expert, not a multiple of the 16-row tiles"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_expert_file_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    changes, expect = CASES[case]
    path = write_tiny_llama(tmp_path / "moe.gguf", **{"n_expert": 4, "n_expert_used": 2, **changes})
    done = numallm("generate", "-m", str(path), "-n", "1", "hello")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert str(path) in line and expect in line, line


# The routing keys and tensors of the DeepSeek family, on the tiny GLM-4.5-like file
# (8 experts, top 2, 3 layers + 1 NextN, the first dense) with its metadata edited: the
# checks load_model runs before placing anything, without a process each.
ROUTING_CASES: dict[str, tuple[dict[str, Any], str | None, str]] = {
    "groups that do not split the experts": (
        {"expert_group_count": 3, "expert_group_used_count": 1}, None,
        "key 'glm4moe.expert_group_count' is 3, which does not split the 8 experts"),
    "groups of one expert": (
        {"expert_group_count": 8, "expert_group_used_count": 2}, None,
        "key 'glm4moe.expert_group_count' is 8, which does not split the 8 experts"),
    "more groups kept than there are": (
        {"expert_group_count": 4, "expert_group_used_count": 5}, None,
        "key 'glm4moe.expert_group_used_count' is 5, expected 1..3"),
    "kept groups too few for the experts used": (
        {"expert_group_count": 4, "expert_group_used_count": 1, "expert_used_count": 3}, None,
        "key 'glm4moe.expert_used_count' is 3, more than the 2 experts of the 1 groups kept"),
    "no trunk layer left": ({"nextn_predict_layers": 4}, None,
                            "key 'glm4moe.nextn_predict_layers' is 4, which leaves none of the 4 layers"),
    "an unknown gating function": ({"expert_gating_func": 3}, None,
                                   "key 'glm4moe.expert_gating_func' is 3, outside the sane range 0..2"),
    "a weights_norm that is no bool": ({"expert_weights_norm": 1}, None,
                                       "key 'glm4moe.expert_weights_norm' should be a bool, found the int 1"),
    "multimodal RoPE sections": ({"rope.dimension_sections": [8, 4, 4, 0]}, None,
                                 "key 'glm4moe.rope.dimension_sections' is set: multimodal RoPE sections (M-RoPE), "
                                 "which numallm does not run"),
    "no shared expert count": ({"expert_shared_count": None}, None,
                               "required key 'glm4moe.expert_shared_count' is missing"),
    "no selection bias for the sigmoid router": ({}, "blk.1.exp_probs_b.bias",
                                                 "required tensor 'blk.1.exp_probs_b.bias' is missing"),
    "no shared expert": ({}, "blk.2.ffn_down_shexp.weight", "required tensor 'blk.2.ffn_down_shexp.weight' is missing"),
}


@pytest.mark.parametrize("case", ROUTING_CASES)
def test_inconsistent_routing_is_one_line(case: str, fixture_model: Callable[[str], Path]) -> None:
    keys, dropped, expect = ROUTING_CASES[case]
    gf = read_gguf(fixture_model("tiny-glm4moe"))
    md = dict(gf.metadata)
    for key, value in keys.items():
        if value is None:
            del md[f"glm4moe.{key}"]
        else:
            md[f"glm4moe.{key}"] = value
    gf = dataclasses.replace(gf, metadata=md, tensors={n: t for n, t in gf.tensors.items() if n != dropped})
    with pytest.raises(ModelFormatError) as err:
        check_architecture(gf)
        check_model(gf, describe(gf.metadata, gf.path))
    line = str(err.value)
    assert "\n" not in line and line.startswith(gf.path) and expect in line, line


def test_leading_dense_layers_past_the_trunk_exit_2(tmp_path: Path) -> None:
    path = write_tiny_glm4moe(tmp_path / "glm.gguf", n_leading_dense=4)
    done = numallm("generate", "-m", str(path), "-n", "1", "hello")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert str(path) in line and "'glm4moe.leading_dense_block_count' is 4, more than the 3 layers" in line, line


def test_a_weights_scale_of_zero_is_llama_cpps_unset(tmp_path: Path) -> None:
    """llama.cpp reads expert_weights_scale 0.0 as not set (it scales by neither 0 nor 1):
    the file is accepted and routes as with 1.0; a negative scale is still refused."""
    logits = {}
    for scale in (0.0, 1.0):
        path = write_tiny_glm4moe(tmp_path / f"scale-{scale}.gguf", expert_weights_scale=scale)
        gf = read_gguf(path)
        check_architecture(gf)
        assert describe(gf.metadata, gf.path).hparams.expert_weights_scale == scale
        eng = Engine(path, ctx_size=64)
        try:
            logits[scale] = eng.logits(list(range(3, 40)))
        finally:
            eng.close()
    np.testing.assert_array_equal(logits[0.0], logits[1.0])
    gf = dataclasses.replace(gf, metadata={**gf.metadata, "glm4moe.expert_weights_scale": -1.0})
    with pytest.raises(ModelFormatError, match="'glm4moe.expert_weights_scale' is -1.0, outside the sane range"):
        check_architecture(gf)
