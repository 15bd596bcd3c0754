"""Record llama.cpp's reference outputs for the "equal to llama.cpp" acceptance tests.

Run once, with the opt-in extra installed (`pip install -e '.[llama-cpp]'`, which
builds llama.cpp from source); the JSON it writes under tests/fixtures/llama_cpp/ is
committed, so the test suite never needs llama.cpp itself:

    python3 scripts/record_llama_cpp_fixtures.py [--models smollm2 gemma3] [--out-dir DIR]
    python3 scripts/record_llama_cpp_fixtures.py --synthetic tiny-qwen2 ... [--pretokenizers]

Per model it records: the prompt token ids, 32 greedy steps of raw logits (top-20 ids
and values per step), llama.cpp's run-to-run spread under different batch splits and
thread counts (the tolerance the tests may claim), and a few hundred tokenizer cases.
--synthetic does the same, with fewer prompts and no tokenizer cases, for the seeded
models of tests/synthetic_arch.FIXTURE_MODELS (written afresh, their sha256 recorded);
--pretokenizers tokenizes a text set under every pre-tokenizer numallm knows, with
SmolLM2's vocabulary. tests/fixtures/llama_cpp/README.md says how the committed files
were made.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from jinja2.sandbox import ImmutableSandboxedEnvironment

from numallm.engine.model_store import KNOWN_MODELS, fetch_known_model, sha256_file
from numallm.engine.tokenizer_pre import PRE_TOKENIZERS
from numallm.errors import NumallmError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic_arch import FIXTURE_MODELS, describe  # noqa: E402
from synthetic_vocab import with_digit_merges  # noqa: E402

try:
    import llama_cpp
except ImportError:  # only this script needs it; say how to get it
    sys.exit("record_llama_cpp_fixtures: llama-cpp-python is missing; "
             "install it with: pip install -e '.[llama-cpp]'")

N_THREADS = 2
N_CTX = 2048
N_BATCH = 512
N_STEPS = 32
TOP_K = 20
DECIMALS = 4
TOKENIZE_SEED = 20261124
N_RANDOM_TOKENIZE_CASES = 300
# (add_special, parse_special) settings every tokenize case is recorded with.
TOKENIZE_MODES = ((True, True), (False, True), (False, False))
CHAT_MESSAGE = "What is the tallest mountain in the world?"

LONG_TEXT = (
    "The lighthouse at the end of the northern pier was built in 1873, after a winter storm "
    "drove three fishing boats onto the rocks within a single week. For most of its life it was "
    "kept by one family: the first keeper, a former ship's carpenter named Elias Brandt, trimmed "
    "the wicks and wound the clockwork that turned the lens every four hours, day and night. His "
    "daughter Marta took over when his eyesight failed, and she kept a logbook in which she wrote "
    "down the weather, the ships that passed, the birds that struck the glass during the autumn "
    "migration, and the price of lamp oil, which rose every year. When the light was electrified "
    "in 1931 the clockwork was no longer needed, but Marta went on winding it each evening out of "
    "habit until the engineers removed it. The logbooks survived the war in a tin box buried under "
    "the coal shed. Historians later used them to reconstruct how the coastline changed: the "
    "sandbar to the east grew by almost two hundred metres in sixty years, and the channel that "
    "the fishing fleet used had to be dredged twice. Today the tower is a small museum. Visitors "
    "climb the one hundred and twelve steps to the gallery, look out over the harbour and the "
    "wind farm on the horizon, and read the keeper's careful handwriting in a glass case at the "
    "bottom. The last entry, dated the day the automatic lamp was switched on, says only:"
)

# Shared by both models; the chat prompt is added per model (see chat_prompt).
PROMPTS: tuple[tuple[str, str], ...] = (
    ("plain", "The capital of France is"),
    ("code", ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n'
             "        return n\n")),
    ("long", LONG_TEXT),
    ("unicode", ("Grüße aus München! 你好，世界。こんにちは、お元気ですか？ Emoji: 😀🚀👍🏽 — café, "
                "naïve, façade, jalapeño.")),
    ("single", "Hello"),
    ("numbers", ("In 2024, 1234567 people visited the museum, up 3.5% from 1,192,838 in 2023. "
                "The total over both years was")),
    ("whitespace", "Name:\tAlice\n\n    Age:\t\t30\n  \n\tCity:   Paris   \n\n\n"),
    ("story", "Once upon a time, in a small village by the sea,"),
)
# Prompts re-run under other batch splits / thread counts for self_consistency.
CONSISTENCY_PROMPTS = ("long", "code")
# The synthetic models' byte-level vocabulary makes "long" ~1300 tokens: left out.
SYNTHETIC_PROMPTS = ("plain", "code", "chat", "unicode", "numbers", "story")
SYNTHETIC_CONSISTENCY_PROMPTS = ("code", "unicode")
N_PRETOKENIZER_RANDOM_CASES = 120

# Raw material for the seeded tokenizer cases: scripts, emoji, digits, code,
# special-token text of both models, whitespace runs and punctuation.
FRAGMENTS: dict[str, tuple[str, ...]] = {
    "words": ("hello", "Hello", "world", "the", "tokenizer", "don't", "it's", "New York",
              "Größe", "Straße", "über", "Müller", "café", "naïve", "élève", "Noël", "niño",
              "¿Qué tal?", "你好世界", "机器学习", "こんにちは", "カタカナ", "日本語", "안녕하세요",
              "Привет", "мир", "مرحبا", "नमस्ते", "Ελληνικά", "สวัสดี", "e\u0301", "ﬁ",
              "A\u200bB", "\ufeffBOM"),
    "emoji": ("😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇩🇪", "❤️", "🤖", "🚀🚀", "✨", "🙂🙃"),
    "digits": ("0", "7", "42", "2024", "1234567", "3.14159", "1,000,000", "2024-11-24", "0x1F",
               "1e-9", "-273.15", "١٢٣", "Ⅻ", "½", "000123", "99999999999"),
    "code": ("def f(x):", "return x**2", "for (int i = 0; i < n; ++i) {", "}", "x += 1;",
             "if __name__ == '__main__':", 'print("hi")', "// comment", "#include <stdio.h>",
             "SELECT * FROM t WHERE id = 1;", '<div class="a">', "λx.x", "a->b", "!==", "'''",
             "`code`", "{{ var }}", "self.x = [1, 2, 3]"),
    "special": ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>",
                "<bos>", "<eos>", "<pad>", "<s>", "</s>", "<unk>", "<mask>", "<|im_start|>user",
                "<start_of_turn>model", "<|im_end|>\n"),
    "space": (" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
              "    ", " " * 9, "\t \n", "\n    "),
    "punct": ("!", "?", "...", "—", "–", "«", "»", "“quoted”", "‘", "'s", "n't", "(", ")", "[",
              "]", "@", "#", "$", "%", "&", "*", ",", ".", ";", ":"),
}
SEPARATORS = ("", " ", " ", " ", "\n", "\t", "  ")
FIXED_TOKENIZE_CASES = ("", " ", "  ", "\n", "\t", "Hello", " Hello", "Hello ", "  leading",
                        "trailing  ", "a", "<|im_start|>user\nHi<|im_end|>\n",
                        "<start_of_turn>user\nHi<end_of_turn>\n", "<s>", "</s>")


def chat_prompt(llm: llama_cpp.Llama, model: str) -> str:
    """A one-turn chat prompt: the GGUF's own template if it has one, else Gemma's format."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        if model != "gemma3":
            raise NumallmError(f"{model}: the GGUF has no chat template; add a format for it here")
        return f"<start_of_turn>user\n{CHAT_MESSAGE}<end_of_turn>\n<start_of_turn>model\n"
    # Same jinja2 settings as Hugging Face's apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": CHAT_MESSAGE}], add_generation_prompt=True)


class _GgmlTensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor, up to its name (all a callback reads)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


class ExpertTap:
    """Collects the experts llama.cpp picks (build_moe_ffn's "ffn_moe_topk-<layer>" tensors)
    through the context's eval callback: experts[layer] gets one [n_tokens, k] array per
    evaluated batch. The last layer only routes the positions whose logits are kept."""

    PREFIX = b"ffn_moe_topk-"

    def __init__(self) -> None:
        self.experts: dict[int, list[np.ndarray]] = {}
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

    def _on_tensor(self, ptr: int, ask: bool, _user: int) -> bool:
        t = _GgmlTensor.from_address(ptr)
        if not t.name.startswith(self.PREFIX):
            return not ask  # ask: "observe this one?"; otherwise: "go on computing?"
        if not ask:
            k, n_tokens = t.ne[0], t.ne[1]
            rows = [np.ctypeslib.as_array((ctypes.c_int32 * k).from_address(t.data + i * t.nb[1]))
                    for i in range(n_tokens)]
            self.experts.setdefault(int(t.name[len(self.PREFIX):]), []).append(np.array(rows))
        return True


def tokenize(llm: llama_cpp.Llama, text: str, add_special: bool, parse_special: bool) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)


def open_model(path: Path, n_threads: int = N_THREADS, n_ubatch: int = N_BATCH,
               tap: ExpertTap | None = None) -> llama_cpp.Llama:
    # flash_attn=False and the F16 KV cache are llama-cpp-python's defaults, spelled out
    # because the fixtures depend on them.
    defaults = llama_cpp.llama_cpp.llama_context_default_params
    if tap is not None:  # Llama() offers no eval callback: hand it one through its defaults
        def with_tap() -> Any:
            params = defaults()
            params.cb_eval = tap.callback
            return params
        llama_cpp.llama_cpp.llama_context_default_params = with_tap
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=n_threads,
                               n_threads_batch=n_threads, n_batch=N_BATCH, n_ubatch=n_ubatch,
                               flash_attn=False, logits_all=False, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_context_default_params = defaults


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """A copy of the raw logits of the last evaluated position."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def forced_run(llm: llama_cpp.Llama, prompt: list[int], continuation: list[int] | None,
               token_by_token: bool = False) -> tuple[np.ndarray, list[int]]:
    """Logits of N_STEPS positions: the prompt's last, then after each continuation token.

    With continuation None the continuation is greedy (argmax of each step); otherwise the
    given tokens are fed, so runs with other batch settings see exactly the same inputs.
    Returns (logits [N_STEPS, n_vocab], the continuation tokens used).
    """
    llm.reset()
    if token_by_token:
        for tok in prompt:
            llm.eval([tok])
    else:
        llm.eval(prompt)
    rows = [last_logits(llm)]
    fed: list[int] = []
    for step in range(1, N_STEPS):
        nxt = int(np.argmax(rows[-1])) if continuation is None else continuation[step - 1]
        fed.append(nxt)
        llm.eval([nxt])
        rows.append(last_logits(llm))
    return np.stack(rows), fed


def top_k(logits: np.ndarray) -> dict[str, list[Any]]:
    # Sorted by logit, ties by lower id: ids[0] is then np.argmax, i.e. the greedy token.
    order = np.lexsort((np.arange(logits.size), -logits))[:TOP_K]
    return {"ids": [int(i) for i in order],
            "values": [round(float(logits[i]), DECIMALS) for i in order]}


def record_prompt(llm: llama_cpp.Llama, name: str, text: str) -> tuple[dict[str, Any], np.ndarray]:
    tokens = tokenize(llm, text, add_special=True, parse_special=True)
    logits, fed = forced_run(llm, tokens, None)
    greedy = [int(np.argmax(row)) for row in logits]
    assert greedy[:-1] == fed  # the last step's argmax is recorded but never fed
    text_out = llm.detokenize(greedy, special=True).decode("utf-8", errors="replace")
    return ({"name": name, "text": text, "tokens": tokens, "greedy": greedy,
             "greedy_text": text_out, "steps": [top_k(row) for row in logits]}, logits)


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = (a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs": float(np.abs(d).max()), "rms": float(np.sqrt(np.mean(d * d)))}


def self_consistency(path: Path, llm: llama_cpp.Llama, recorded: dict[str, dict[str, Any]],
                     reference: dict[str, np.ndarray], prompts: Sequence[str]) -> dict[str, Any]:
    """llama.cpp against itself: the same inputs under other batch splits / thread counts."""
    variants = {
        "prompt fed token by token (n_ubatch 1)": (llm, True),
        "n_ubatch 64 (prompt split into ubatches of 64)": (open_model(path, n_ubatch=64), False),
        "n_threads 1": (open_model(path, n_threads=1), False),
    }
    cases = []
    for name in prompts:
        rec = recorded[name]
        for variant, (model, one_by_one) in variants.items():
            logits, _ = forced_run(model, rec["tokens"], rec["greedy"][:-1], one_by_one)
            last = diff_stats(logits[0], reference[name][0])
            steps = diff_stats(logits, reference[name])
            cases.append({"prompt": name, "variant": variant,
                          "last_max_abs": last["max_abs"], "last_rms": last["rms"],
                          "steps_max_abs": steps["max_abs"], "steps_rms": steps["rms"],
                          "same_greedy": [int(np.argmax(r)) for r in logits] == rec["greedy"]})
    return {
        "max_abs": max(c["steps_max_abs"] for c in cases),
        "rms": max(c["steps_rms"] for c in cases),
        "how": ("Reference: prompt in one n_batch=512 ubatch, n_threads=2, then the 32 greedy "
                "tokens one at a time. Each variant is fed the same tokens (teacher-forced) and "
                "compared over the full logits; last_* is the last prompt position, steps_* all "
                "32 steps. max_abs/rms above are the worst steps_* over all cases."),
        "cases": cases,
    }


def tokenize_texts(prompt_texts: list[str], n_random: int = N_RANDOM_TOKENIZE_CASES) -> list[str]:
    """Fixed edge cases, the prompts themselves, then seeded random mixes of FRAGMENTS."""
    rng = random.Random(TOKENIZE_SEED)
    kinds = sorted(FRAGMENTS)
    texts = list(dict.fromkeys([*FIXED_TOKENIZE_CASES, *prompt_texts]))
    seen = set(texts)
    while len(texts) < len(FIXED_TOKENIZE_CASES) + len(prompt_texts) + n_random:
        parts = [rng.choice(FRAGMENTS[rng.choice(kinds)]) for _ in range(rng.randint(1, 8))]
        text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        if rng.random() < 0.2:
            text = rng.choice(FRAGMENTS["space"]) + text
        if rng.random() < 0.7:  # drop the trailing separator most of the time
            text = text.rstrip(" \t\n")
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def record_model(model: str, command: str) -> dict[str, Any]:
    return record(fetch_known_model(model), model, command, [name for name, _ in PROMPTS] + ["chat"],
                  CONSISTENCY_PROMPTS, tokenize_cases=True)


def record_synthetic(name: str, command: str, folder: Path) -> dict[str, Any]:
    writer = FIXTURE_MODELS[name]
    path = writer(folder / f"{name}.gguf")
    return record(path, name, command, SYNTHETIC_PROMPTS, SYNTHETIC_CONSISTENCY_PROMPTS, tokenize_cases=False,
                  extra={"writer": describe(writer)}, experts=True)


def record_experts(path: Path, recorded: dict[str, dict[str, Any]], reference: dict[str, np.ndarray]) -> None:
    """Adds "experts" to each MoE prompt record: per position (prompt, then the fed greedy
    tokens), per layer, the experts llama.cpp chose in its order (null: not routed, i.e.
    the last layer's prompt positions but the last, and dense layers). Reruns each prompt with an ExpertTap,
    which must leave the logits bit-equal."""
    tap = ExpertTap()
    llm = open_model(path, tap=tap)
    for name, rec in recorded.items():
        tap.experts.clear()
        logits, _ = forced_run(llm, rec["tokens"], rec["greedy"][:-1])
        if not np.array_equal(logits, reference[name]):
            raise NumallmError(f"{path.name}: logits changed with the eval callback; the experts recorded "
                               "would not be those of the recorded run")
        if not tap.experts:
            return  # a dense model
        n_pos = len(rec["tokens"]) + N_STEPS - 1
        # Layers before the first MoE one (DeepSeek's and GLM's leading dense layers) stay null.
        table: list[list[list[int] | None]] = [[None] * (max(tap.experts) + 1) for _ in range(n_pos)]
        for layer, batches in tap.experts.items():
            # The prompt's batch (all positions, or the last one only), then one token per step.
            first = len(rec["tokens"]) - len(batches[0])
            for pos, row in enumerate(np.concatenate(batches), start=first):
                table[pos][layer] = [int(e) for e in row]
        rec["experts"] = table
    llm.close()


def record(path: Path, model: str, command: str, prompt_names: Sequence[str], consistency: Sequence[str],
           tokenize_cases: bool, extra: dict[str, Any] | None = None, experts: bool = False) -> dict[str, Any]:
    llm = open_model(path)
    texts = dict(PROMPTS)
    prompts = [(name, texts[name]) for name in ("plain", "code") if name in prompt_names]
    prompts += [("chat", chat_prompt(llm, model))] if "chat" in prompt_names else []
    prompts += [(name, text) for name, text in PROMPTS[2:] if name in prompt_names]
    recorded: dict[str, dict[str, Any]] = {}
    reference: dict[str, np.ndarray] = {}
    for name, text in prompts:
        recorded[name], reference[name] = record_prompt(llm, name, text)
        print(f"{model} {name}: {len(recorded[name]['tokens'])} tokens -> "
              f"{recorded[name]['greedy_text']!r}", file=sys.stderr, flush=True)
    repeat, _ = forced_run(llm, recorded[consistency[0]]["tokens"], None)
    if not np.array_equal(repeat, reference[consistency[0]]):
        raise NumallmError(f"{model}: llama.cpp gave different logits for the same run twice; "
                           "the fixtures would not be reproducible")
    if experts:
        record_experts(path, recorded, reference)
    cases = [{"text": t, "add_special": a, "parse_special": p, "ids": tokenize(llm, t, a, p)}
             for t in tokenize_texts([text for _, text in prompts]) for a, p in TOKENIZE_MODES]
    return {
        "model": path.name,
        "model_sha256": sha256_file(path),
        **(extra or {}),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_BATCH, "n_threads": N_THREADS,
        "kv_cache": "f16", "flash_attn": False, "n_vocab": llm.n_vocab(),
        "top_k": TOP_K, "decimals": DECIMALS, "greedy_text_special": True,
        "recorded": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": command,
        "self_consistency": self_consistency(path, llm, recorded, reference, consistency),
        "prompts": list(recorded.values()),
        **({"tokenize_cases": cases} if tokenize_cases else {}),
    }


# Texts aimed at where pre-tokenizers differ, before the seeded mixes.
PRETOKENIZER_TEXTS = (
    "1234567890 12 345 6789012", "3.14159, -273.15 and 1,000,000", "你好世界，机器学习。日本語のテキスト",
    "こんにちは カタカナ ひらがな", "안녕하세요 세계", "I'M YOU'RE we'Ve they'LL it'S he'D don't",
    "a   b\n\n\n  c\t\t d  \r\n  e", "x\u3000y\u00a0z\u2003w", "     leading and trailing     ",
    "def f(x):\n    return x**2  # comment\n", "<div class=\"a\">Hi</div>", "camelCaseWord HTTPServer iPhone",
    "ÀÉÎõü ÇA ça Ñandú", "😀🚀👍🏽 emoji👨\u200d👩\u200d👧 flags🇩🇪", "\n\n\n", "!!!??? ... ---", "a\u0301e\u0301",
)


def vocab_only_gguf(keys: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]], pre: str,
                    path: Path) -> Path:
    """A GGUF with these tokenizer keys (value, type, array item type) and `pre`, no tensors (opened vocab_only)."""
    writer = GGUFWriter(str(path), "llama")
    for key, (value, vtype, sub_type) in keys.items():
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    writer.add_tokenizer_pre(pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def pretokenizer_vocabulary(source: Path) -> dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]]:
    """source's tokenizer.ggml.* keys but pre and add_bos_token (so each pre-tokenizer's own
    BOS default shows), with synthetic_vocab.with_digit_merges' 2- and 3-digit tokens."""
    keys = {}
    for key, field in GGUFReader(source).fields.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
            vtype = field.types[0]
            keys[key] = (field.contents(), vtype, field.types[1] if vtype == GGUFValueType.ARRAY else None)
    tokens, types, merges = with_digit_merges(keys["tokenizer.ggml.tokens"][0], keys["tokenizer.ggml.token_type"][0],
                                              keys["tokenizer.ggml.merges"][0])
    for key, value in (("tokens", tokens), ("token_type", types), ("merges", merges)):
        keys[f"tokenizer.ggml.{key}"] = (value, *keys[f"tokenizer.ggml.{key}"][1:])
    return keys


def record_pretokenizers(command: str, folder: Path) -> dict[str, Any]:
    """Every PRE_TOKENIZERS name on SmolLM2's vocabulary; names that tokenize alike are grouped."""
    source = fetch_known_model("smollm2")
    vocabulary = pretokenizer_vocabulary(source)
    texts = tokenize_texts([*PRETOKENIZER_TEXTS, *(text for _, text in PROMPTS)], N_PRETOKENIZER_RANDOM_CASES)
    groups: dict[str, dict[str, Any]] = {}
    for pre in sorted(PRE_TOKENIZERS):
        llm = llama_cpp.Llama(model_path=str(vocab_only_gguf(vocabulary, pre, folder / f"{pre}.gguf")),
                              vocab_only=True, verbose=False)
        result = {"ids": [tokenize(llm, t, False, False) for t in texts],
                  "hello_add_special": tokenize(llm, "Hello", True, False)}
        llm.close()
        key = json.dumps(result)
        groups.setdefault(key, {"names": [], **result})["names"].append(pre)
        print(f"pre-tokenizer {pre}: {sum(map(len, result['ids']))} tokens", file=sys.stderr, flush=True)
    return {
        "vocabulary": source.name,
        "vocabulary_sha256": sha256_file(source),
        "llama_cpp_python": llama_cpp.__version__,
        "recorded": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": command,
        "how": ("SmolLM2's tokenizer.ggml.* keys plus tests/synthetic_vocab.with_digit_merges' tokens, "
                "tokenizer.ggml.pre set to each name and no add_bos_token key; llama_tokenize(text, add_special=false, parse_special=false) of every "
                "text, and of \"Hello\" with add_special=true (the pre-tokenizer's BOS default). Names "
                "whose results are identical share a group."),
        "texts": texts,
        "groups": list(groups.values()),
    }


def _scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _flat(value: Any) -> bool:
    return _scalar(value) or (isinstance(value, list) and all(map(_scalar, value)))


def _one_line(value: Any) -> bool:
    """Scalars, lists of scalars, records (steps, tokenize cases) made only of those, and
    lists of lists of scalars (one position's experts per layer)."""
    if isinstance(value, dict):
        return all(map(_flat, value.values()))
    return _scalar(value) or all(map(_flat, value))


def dumps(value: Any, indent: int = 0) -> str:
    """JSON with one line per step / tokenize case, so the fixtures read well in a diff."""
    if _one_line(value):
        return json.dumps(value, ensure_ascii=False)
    pad = " " * (indent + 1)
    if isinstance(value, list):
        body = ",\n".join(pad + dumps(v, indent + 1) for v in value)
        return f"[\n{body}\n{' ' * indent}]"
    body = ",\n".join(f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items())
    return f"{{\n{body}\n{' ' * indent}}}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(KNOWN_MODELS),
                        help="known models to record (default: smollm2 gemma3 unless --synthetic or "
                             "--pretokenizers is given)")
    parser.add_argument("--synthetic", nargs="+", choices=sorted(FIXTURE_MODELS), default=[],
                        help="seeded synthetic models to write and record")
    parser.add_argument("--pretokenizers", action="store_true",
                        help="record pretokenizers.json: every supported tokenizer.ggml.pre on SmolLM2's vocabulary")
    parser.add_argument("--out-dir", type=Path,
                        default=Path(__file__).resolve().parent.parent / "tests/fixtures/llama_cpp")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = [] if args.synthetic or args.pretokenizers else ["smollm2", "gemma3"]
    command = " ".join(["python3 scripts/record_llama_cpp_fixtures.py", *argv])
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def write(name: str, fixture: dict[str, Any]) -> None:
        out = args.out_dir / f"{name}.json"
        out.write_text(dumps(fixture) + "\n", encoding="utf-8")
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)

    for model in args.models:
        write(model, record_model(model, command))
    with tempfile.TemporaryDirectory(prefix="numallm-fixtures-") as tmp:
        for name in args.synthetic:
            write(name, record_synthetic(name, command, Path(tmp)))
        if args.pretokenizers:
            write("pretokenizers", record_pretokenizers(command, Path(tmp)))


if __name__ == "__main__":
    main()
