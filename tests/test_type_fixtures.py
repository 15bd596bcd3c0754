"""The engine on tiny models of the newer weight types (the i-quants, TQ1_0, TQ2_0,
MXFP4) against llama.cpp's logits on the same files (tests/fixtures/llama_cpp/
tiny_types.json, recorded by scripts/record_type_fixtures.py; tests/type_models.py
writes the models).

Tolerance: both sides quantize the activations to 8 bits as llama.cpp pairs them with
each type (q8_K, q8_0), but not in the same order of sums, and the reference forward
pass (float64 on gguf-py's dequantized weights) is 0.2 max / 0.05 rms from llama.cpp
on such models; a block decoded wrongly moves logits by about their own spread (2).
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
MAX_ABS, RMS = 0.5, 0.1


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
