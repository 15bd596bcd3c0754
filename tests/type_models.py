"""The two tiny models of tests/fixtures/llama_cpp/tiny_types.json: every newer weight
type (the i-quants, TQ1_0, TQ2_0, MXFP4) in one of their 9 kinds of matrix.

tests/synthetic.write_tiny_llama with n_embd 256 and n_ff 512 (rows a multiple of
every type's block) and an untied output; each model holds 9 of the 12 types, so both
together cover all 12 and the embedding is read in 2 of them. One model of many types,
not one per type: the engine compiles a forward pass per set of types.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType as T
from synthetic import write_tiny_llama

MODEL_ARGS = {"n_embd": 256, "n_ff": 512, "tied_output": False}
KINDS = ("token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output")
MODELS = {  # name: the type of each kind of matrix, in KINDS order
    "mixed_a": ("IQ4_XS", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL"),
    "mixed_b": ("TQ1_0", "TQ2_0", "MXFP4", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ1_M", "IQ4_XS", "IQ2_XXS"),
}
IDS = [1, 298, 13, 75, 292, 111, 114, 47, 260, 33, 300, 5]


def write_model(name: str, path: Path) -> Path:
    """Write the model `name` of MODELS to path."""
    types = {kind: T[t] for kind, t in zip(KINDS, MODELS[name], strict=True)}
    return write_tiny_llama(path, weight_type=types["attn_q"], embd_type=types["token_embd"],
                            type_overrides=types, **MODEL_ARGS)
