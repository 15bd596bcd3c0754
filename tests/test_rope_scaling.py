"""RoPE scaling for every architecture (engine/arch/spec.rope_scaling, forward._rope_tables):
the file's rope.scaling.* read as llama.cpp reads them, and the rotation tables against
the reference's ggml rope_yarn (tests/reference_forward.rope)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reference_forward import Yarn, rope
from test_arch import _minimal_md

from numallm.engine.arch import describe
from numallm.engine.forward import _rope_tables
from numallm.errors import ModelFormatError


def _hp(name: str = "llama", **scaling: Any) -> Any:
    md = _minimal_md(name) | {f"{name}.rope.scaling.{k}": v for k, v in scaling.items()}
    return describe(md, "model.gguf").hparams


def test_rope_scaling_keys_as_llama_cpp_reads_them() -> None:
    hp = _hp()
    assert (hp.rope_freq_scale, hp.rope_ext_factor, hp.rope_attn_factor) == (1.0, 0.0, 1.0)
    assert _hp(factor=8.0).rope_freq_scale == 0.125  # no type: linear (Gemma 3 4B's files)
    assert _hp(type="none", factor=8.0).rope_freq_scale == 1.0
    hp = _hp(type="yarn", factor=4.0, original_context_length=4096)
    assert (hp.rope_freq_scale, hp.rope_ext_factor, hp.rope_n_ctx_orig) == (0.25, 1.0, 4096)
    # get_mscale(4, 1) / (1 + 0.1 ln 4): rope_yarn multiplies the second factor back
    assert hp.rope_attn_factor == pytest.approx(1.0)
    assert _hp(type="yarn", factor=4.0, attn_factor=0.5).rope_attn_factor == pytest.approx(0.5)
    assert _hp(type="yarn", factor=4.0).rope_n_ctx_orig == hp.n_ctx_train  # default: the trained context
    with pytest.raises(ModelFormatError, match="'llama.rope.scaling.type' is 'longrope'; numallm runs none, linear, yarn"):
        _hp(type="longrope")


@pytest.mark.parametrize("scaling", [{}, dict(type="linear", factor=8.0),
                                     dict(type="yarn", factor=40.0, original_context_length=4096)])
def test_rope_tables_rotate_as_ggml(scaling: dict[str, Any]) -> None:
    hp = _hp(**scaling)._replace(n_rot=64, rope_base=10000.0)
    positions = np.array([0, 1, 7, 600, 5000, 70000], np.int32)
    cos, sin = _rope_tables(positions, hp.n_rot, hp.rope_base, hp.rope_freq_scale, hp)
    x = np.random.default_rng(0).standard_normal((len(positions), 1, hp.n_rot))
    ours = x.copy()
    ours[..., 0::2] = x[..., 0::2] * cos[:, None] - x[..., 1::2] * sin[:, None]
    ours[..., 1::2] = x[..., 0::2] * sin[:, None] + x[..., 1::2] * cos[:, None]
    factor = scaling.get("factor", 1.0)
    if scaling.get("type") == "yarn":
        yarn = Yarn(factor, hp.rope_n_ctx_orig, hp.rope_attn_factor)
        ref = rope(x, positions.astype(np.float64), hp.n_rot, hp.rope_base, neox=False, yarn=yarn)
    else:  # linear: the angles scaled, nothing else
        ref = rope(x, positions.astype(np.float64) / factor, hp.n_rot, hp.rope_base, neox=False)
    # ggml's float32 angles (each pair's by 32 float32 products) drift from the float64
    # ones in proportion to the position: measured 2.6e-3 at 70000, 3e-4 at 5000
    assert np.all(np.abs(ours - ref).max(axis=(1, 2)) < (positions + 4) * 1e-7)
    if scaling:  # and the scaling did something
        plain = rope(x, positions.astype(np.float64), hp.n_rot, hp.rope_base, neox=False)
        assert np.abs(ours - plain).max() > 0.1
