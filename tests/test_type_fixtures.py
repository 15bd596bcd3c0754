"""The engine on tiny models of the newer weight types (the i-quants, TQ1_0, TQ2_0,
MXFP4) against llama.cpp's logits on the same files (tests/fixtures/llama_cpp/
tiny_types.json, recorded by scripts/record_type_fixtures.py; tests/type_models.py
writes the models).

Tolerance: both sides quantize the activations to 8 bits as llama.cpp pairs them with
each type. Measured: 0.002 max on mixed_a (all q8_K types but its IQ4_NL output: the
same integers, other summation order), 0.20 max / 0.04 rms on mixed_b, whose TQ1_0
embedding feeds q8_0 types (MXFP4, IQ4_NL) that keep their activation scales in
float32 where llama.cpp rounds them to float16; the float64 reference forward pass is
0.22 / 0.05 from llama.cpp on both. A block decoded wrongly moves logits by about
their own spread (2).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from numallm.engine import Engine
from type_models import IDS, MODELS, write_model

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llama_cpp" / "tiny_types.json").read_text())
MAX_ABS, RMS = 0.4, 0.1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiny_model_matches_llama_cpp(name: str, tmp_path: Path) -> None:
    rec = next(m for m in FIXTURE["models"] if m["name"] == name)
    path = write_model(name, tmp_path / f"{name}.gguf")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"], "the model generator changed"
    assert FIXTURE["ids"] == IDS
    with Engine(path, threads=2, kv_type="f32") as eng:
        ours = eng.logits(IDS).astype(np.float64)
    diff = ours - np.array(rec["logits"])
    max_abs, rms = float(np.abs(diff).max()), float(np.sqrt(np.mean(diff**2)))
    assert max_abs <= MAX_ABS and rms <= RMS, f"{name}: max {max_abs:.3f}, rms {rms:.3f}"
