"""Record llama.cpp's embeddings of a few texts, for the /v1/embeddings test.

Run once with llama-cpp-python installed (`pip install -e '.[llama-cpp]'`); the JSON it
writes under tests/fixtures/llama_cpp/ is committed, so the tests never need llama.cpp:

    python3 scripts/record_llama_cpp_embeddings.py [--models smollm2 gemma3] [--out-dir DIR]

Per model and per pooling (mean, cls, last): llama.cpp's unit-length embedding of each
text (what llama-server's /v1/embeddings returns for that --pooling), with the text's
token ids. The whole text is one ubatch, as llama.cpp needs for pooled embeddings.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from numallm.engine.model_store import KNOWN_MODELS, fetch_known_model, sha256_file
from record_llama_cpp_fixtures import LONG_TEXT, PROMPTS, N_THREADS, dumps, tokenize

import llama_cpp  # record_llama_cpp_fixtures said how to get it if it is missing

N_CTX = 2048
DECIMALS = 6
POOLINGS = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
            "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
# Short and long; the last is over 512 tokens, so numallm computes it in two chunks.
TEXTS = [text for name, text in PROMPTS if name in ("plain", "code", "unicode", "single")] + [LONG_TEXT * 2]


def record_model(model: str, command: str) -> dict[str, Any]:
    path = fetch_known_model(model)
    texts: list[dict[str, Any]] = [{"text": t, "tokens": [], "embeddings": {}} for t in TEXTS]
    for name, kind in POOLINGS.items():
        llm = llama_cpp.Llama(model_path=str(path), embedding=True, pooling_type=kind, n_ctx=N_CTX,
                              n_batch=N_CTX, n_ubatch=N_CTX, n_threads=N_THREADS, n_threads_batch=N_THREADS,
                              flash_attn=False, verbose=False)
        for entry in texts:
            # Llama.embed tokenizes with add_bos=True and special=False; these texts hold no control tokens.
            entry["tokens"] = tokenize(llm, entry["text"], True, False)
            vector = llm.embed(entry["text"], normalize=True)
            entry["embeddings"][name] = [round(float(v), DECIMALS) for v in vector]
        print(f"{model} {name}: {len(texts)} texts, {len(texts[0]['embeddings'][name])} dimensions",
              file=sys.stderr, flush=True)
        llm.close()
    return {
        "model": path.name,
        "model_sha256": sha256_file(path),
        "llama_cpp_python": llama_cpp.__version__,
        "n_ctx": N_CTX, "n_ubatch": N_CTX, "n_threads": N_THREADS, "normalize": "euclidean",
        "decimals": DECIMALS,
        "recorded": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": command,
        "texts": texts,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(KNOWN_MODELS), default=["smollm2", "gemma3"])
    parser.add_argument("--out-dir", type=Path,
                        default=Path(__file__).resolve().parent.parent / "tests/fixtures/llama_cpp")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    command = " ".join(["python3 scripts/record_llama_cpp_embeddings.py", *argv])
    for model in args.models:
        out = args.out_dir / f"embeddings_{model}.json"
        out.write_text(dumps(record_model(model, command)) + "\n", encoding="utf-8")
        print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)


if __name__ == "__main__":
    main()
