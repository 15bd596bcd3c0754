"""Record llama.cpp's logits on tiny synthetic models whose matrices are in each of the
weight types numallm reads beyond the classic ones (the i-quants, TQ1_0, TQ2_0, MXFP4).

Run once with llama-cpp-python installed; the JSON it writes is committed and
tests/test_type_fixtures.py compares the engine with it (the tests never run llama.cpp):

    python3 scripts/record_type_fixtures.py [--out tests/fixtures/llama_cpp/tiny_types.json]

The models are tests/type_models.py's (random blocks with the float weights' spread:
gguf-py cannot encode most of these types; tests/iq_blocks.py). The file's sha256 is
stored so a test notices a generator that no longer writes the same model.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from iq_blocks import RANDOM_BLOCK_TYPES  # noqa: E402
from type_models import IDS, KINDS, MODEL_ARGS, MODELS, write_model  # noqa: E402

try:
    import llama_cpp
except ImportError:
    sys.exit("record_type_fixtures: llama-cpp-python is missing; install it with: pip install -e '.[llama-cpp]'")

DECIMALS = 3


def record(name: str, workdir: Path) -> dict[str, object]:
    path = write_model(name, workdir / f"{name}.gguf")
    # f32 KV cache, one thread, the whole prompt in one batch: llama.cpp's most exact setup.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1,
                          logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                          verbose=False)
    try:
        llm.eval(IDS)
        logits = np.array(llm.scores[: len(IDS)], np.float32)
    finally:
        llm.close()
    return {"name": name, "types": dict(zip(KINDS, MODELS[name], strict=True)),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "logits": np.round(logits.astype(np.float64), DECIMALS).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "llama_cpp" / "tiny_types.json")
    args = ap.parse_args()
    assert {t for types in MODELS.values() for t in types} == {t.name for t in RANDOM_BLOCK_TYPES}
    with tempfile.TemporaryDirectory() as tmp:
        models = [record(name, Path(tmp)) for name in MODELS]
    doc = {"llama_cpp_python": llama_cpp.__version__,
           "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(),
           "recorded": datetime.date.today().isoformat(),
           "command": "python3 scripts/record_type_fixtures.py",
           "model_args": MODEL_ARGS, "ids": IDS, "decimals": DECIMALS,
           "settings": "n_ctx 64, n_batch = n_ubatch 64, n_threads 1, f32 KV cache"}
    # One model a line: readable diffs without a line per number.
    lines = [json.dumps(doc)[:-1] + ', "models": [']
    lines += [" " + json.dumps(m) + ("," if i + 1 < len(models) else "") for i, m in enumerate(models)]
    args.out.write_text("\n".join(lines) + "\n]}\n", encoding="utf-8")
    print(f"wrote {args.out} ({len(models)} models)")


if __name__ == "__main__":
    main()
