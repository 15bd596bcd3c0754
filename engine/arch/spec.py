"""What an architecture is to numallm: one description per `general.architecture`.

An Architecture names the hyperparameter keys it reads (type, default, sane range),
the decoder slots it uses (engine/arch/slots.py) with the GGUF tensor of each, taken
from gguf's own constants, and the HParams values llama.cpp hard-codes for it.
engine/model_checks.py checks a file against it, `Architecture.describe` reads the
HParams with it, and the weight loader finds the tensors through it. The decoder's
optional parts (post-norms, per-head q/k norms, ...) are the slots an architecture
maps; the others stay empty and the forward pass skips them. HParams and
sliding_window_layer are compiled into the forward pass, so numallm.kernels.numba_cache
stamps its cache with this file too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES, ExpertGatingFuncType, Keys
from numallm.engine.arch.slots import BIASES, LayerMatrix, LayerVector
from numallm.engine.gguf_file import GGUFFile
from numallm.errors import ModelFormatError

ACT_SILU = 0
ACT_GELU_TANH = 1

# How a router's logits become the experts' probabilities (GGUF's expert_gating_func values).
GATING_SOFTMAX = int(ExpertGatingFuncType.SOFTMAX)
GATING_SIGMOID = int(ExpertGatingFuncType.SIGMOID)

# Upper bounds far above any real model, so a corrupt value fails with its key named
# instead of as a huge allocation or a division by zero later.
MAX_LAYERS = 4096
MAX_EMBD = 1 << 18
MAX_FF = 1 << 22
MAX_HEADS = 4096
MAX_HEAD_DIM = 4096
MAX_CONTEXT = 1 << 24
MAX_EXPERTS = 4096


class HParams(NamedTuple):
    """Everything the decoder needs to know, in one record Numba can take as an argument."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float        # global layers
    rope_base_local: float  # sliding-window layers
    n_rot: int
    rope_neox: bool         # rotate (x[i], x[i + n_rot/2]) instead of adjacent pairs
    attn_scale: float
    embd_scale: float       # token embeddings are multiplied by this
    act: int                # ACT_SILU or ACT_GELU_TANH, gated FFN either way
    sliding_window: int     # 0: no sliding-window layers
    swa_period: int         # layer il is global when (il + 1) % swa_period == 0; 0: all global
    final_softcap: float    # 0: none
    n_expert: int = 0       # experts of a mixture-of-experts FFN; 0: a dense FFN
    n_expert_used: int = 0  # experts each token is routed to
    n_ff_exp: int = 0       # one expert's FFN width
    expert_weights_norm: bool = True  # the chosen experts' weights are divided by their sum
    expert_gating: int = GATING_SOFTMAX  # or GATING_SIGMOID
    expert_weights_scale: float = 0.0    # the chosen experts' weights are multiplied by this; 0 or 1: not
    n_expert_groups: int = 0  # > 1: experts are chosen only from the n_group_used best of this many
    n_group_used: int = 0     # equal groups (a group's score: the sum of its two best)
    n_expert_shared: int = 0  # shared experts every token runs besides its routed ones
    n_layer_dense_lead: int = 0  # the first this many layers have a dense FFN, the others experts
    n_layer_nextn: int = 0    # NextN (multi-token prediction) layers after the n_layer run: not run
    layer0: int = 0         # a pipeline stage's first layer in the whole model (its layers are n_layer)
    # RoPE scaling as llama_context sets it up from rope.scaling.* (the defaults: none).
    rope_freq_scale: float = 1.0   # global layers' angles times this (1 / rope.scaling.factor)
    rope_ext_factor: float = 0.0   # YaRN's mix of the original angles: 1 with yarn, else 0
    rope_attn_factor: float = 1.0  # the rotation's magnitude (llama_context's yarn_attn_factor)
    rope_n_ctx_orig: int = 0       # YaRN's original context, for its correction dimensions
    rope_yarn_log_mul: float = 0.0  # deepseek2's mscale_all_dim (rope.scaling.yarn_log_multiplier / 0.1)
    # Multi-head latent attention (deepseek2): kv_lora_rank 0 is ordinary attention.
    q_lora_rank: int = 0   # > 0: queries through attn_q_a -> attn_q_a_norm -> attn_q_b instead of attn_q
    kv_lora_rank: int = 0  # the width of the cached latent (values), besides the n_rot rotated key dims
    head_dim_v: int = 0    # a head's value width, attn_output's input per head (0: head_dim)


def moe_layer(hp: HParams, il: int) -> bool:
    """Whether layer il's FFN is a mixture of experts (the others are dense)."""
    return hp.n_expert > 0 and hp.layer0 + il >= hp.n_layer_dense_lead


def value_dim(hp: HParams) -> int:
    """A head's value width."""
    return hp.head_dim_v or hp.head_dim


def sliding_window_layer(hp: HParams, il: int) -> bool:
    """Whether layer il attends within hp.sliding_window (with its own RoPE base)."""
    return hp.swa_period > 0 and (hp.layer0 + il + 1) % hp.swa_period != 0


class Key(NamedTuple):
    """A hyperparameter in the file's metadata."""

    name: str                       # a gguf.Keys template, "{arch}.block_count"
    kind: type                      # int, float or bool (lo and hi unused)
    lo: float                       # sane values: lo..hi for an int, (lo, hi] for a float
    hi: float
    field: str | None = None        # the HParams field it sets; None: checked only
    default: float | None = None    # when the file has none (None: required, or see _geometry_defaults)
    required: bool = False
    unset: float | None = None      # a value that llama.cpp reads as "not set", taken whatever lo says


# The keys every llama-family architecture names alike, integers first.
INT_KEYS = (
    Key(Keys.LLM.BLOCK_COUNT, int, 1, MAX_LAYERS, "n_layer", required=True),
    Key(Keys.LLM.EMBEDDING_LENGTH, int, 1, MAX_EMBD, "n_embd", required=True),
    Key(Keys.LLM.FEED_FORWARD_LENGTH, int, 1, MAX_FF, "n_ff", required=True),
    Key(Keys.Attention.HEAD_COUNT, int, 1, MAX_HEADS, "n_head", required=True),
    Key(Keys.Attention.HEAD_COUNT_KV, int, 1, MAX_HEADS, "n_head_kv"),
    Key(Keys.LLM.CONTEXT_LENGTH, int, 1, MAX_CONTEXT, "n_ctx_train", 2048),
    Key(Keys.Attention.KEY_LENGTH, int, 1, MAX_HEAD_DIM, "head_dim"),
    Key(Keys.Attention.VALUE_LENGTH, int, 1, MAX_HEAD_DIM),
    Key(Keys.Rope.DIMENSION_COUNT, int, 1, MAX_HEAD_DIM, "n_rot"),
    Key(Keys.LLM.VOCAB_SIZE, int, 1, 1 << 31, "n_vocab"),
)


# A mixture-of-experts FFN's keys (model_checks checks used against count).
EXPERT_KEYS = (
    Key(Keys.LLM.EXPERT_COUNT, int, 0, MAX_EXPERTS, "n_expert", 0),
    Key(Keys.LLM.EXPERT_USED_COUNT, int, 0, MAX_EXPERTS, "n_expert_used", 0),
)


def float_keys(rope_base: float, rms_eps: float) -> tuple[Key, ...]:
    """The float keys every llama-family architecture names alike, with its defaults."""
    return (
        Key(Keys.Attention.LAYERNORM_RMS_EPS, float, 0.0, 1.0, "rms_eps", rms_eps),
        Key(Keys.Rope.FREQ_BASE, float, 0.0, 1e12, "rope_base", rope_base),
        Key(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, float, 0.0, 1e6, "final_softcap", 0.0),
        *ROPE_SCALING_KEYS,
    )


# RoPE scaling, which llama.cpp reads for every architecture (rope_scaling below turns
# them into HParams; the type is a string, checked there).
ROPE_SCALING_KEYS = (
    Key(Keys.Rope.SCALING_FACTOR, float, 0.0, 1e6),
    Key(Keys.Rope.SCALING_ATTN_FACTOR, float, 0.0, 1e6),
    Key(Keys.Rope.SCALING_ORIG_CTX_LEN, int, 1, MAX_CONTEXT),
)
ROPE_SCALING_TYPES = ("none", "linear", "yarn")
# llama_hparams' YaRN ramp (no file of the supported architectures sets them)
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0


def rope_scaling(arch: str, values: Mapping[str, Any], md: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The HParams of RoPE scaling, as llama_model::load_hparams and llama_context compute
    them: freq_scale is 1 / rope.scaling.factor unless the type is none (an absent type is
    linear); yarn mixes in the original angles (ext_factor 1) and sets the magnitude from
    the factor and, for deepseek2, yarn_log_multiplier; rope.scaling.attn_factor scales it."""
    kind = md.get(Keys.Rope.SCALING_TYPE.format(arch=arch), "linear")
    if kind not in ROPE_SCALING_TYPES:
        raise ModelFormatError(f"{path}: key {Keys.Rope.SCALING_TYPE.format(arch=arch)!r} is {kind!r}; "
                               f"numallm runs {', '.join(ROPE_SCALING_TYPES)}")
    factor = float(md.get(Keys.Rope.SCALING_FACTOR.format(arch=arch), 0.0))
    freq_scale = 1.0 if kind == "none" or factor == 0.0 else 1.0 / factor
    ext_factor = 1.0 if kind == "yarn" else 0.0
    attn_factor = 1.0
    # Only deepseek2 reads yarn_log_multiplier, and cancels the converter's 0.1 (in float32)
    log_mul = float(np.float32(values.get("rope_yarn_log_mul", 0.0)) / np.float32(0.1))
    if ext_factor:
        factor = 1.0 / freq_scale

        def mscale(m: float) -> float:  # llama_context's get_mscale
            return 1.0 if factor <= 1.0 else 0.1 * m * math.log(factor) + 1.0

        if log_mul:
            m = log_mul if arch == MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2] and log_mul != 1.0 else 1.0
            attn_factor = mscale(m) / mscale(log_mul)
        else:
            attn_factor = mscale(1.0)
        attn_factor /= 1.0 + 0.1 * math.log(factor)  # ggml's rope_yarn multiplies it back
    attn_factor *= float(md.get(Keys.Rope.SCALING_ATTN_FACTOR.format(arch=arch), 1.0))
    n_ctx_orig = int(md.get(Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch), values["n_ctx_train"]))
    return dict(rope_freq_scale=freq_scale, rope_ext_factor=ext_factor, rope_attn_factor=attn_factor,
                rope_n_ctx_orig=n_ctx_orig, rope_yarn_log_mul=log_mul)


# The plain (llama) decoder's choices; an architecture's `fixed` values override them.
DECODER_DEFAULTS: dict[str, Any] = dict(rope_neox=False, embd_scale=1.0, act=ACT_SILU, sliding_window=0,
                                        swa_period=0)

# GGUF tensors of the slots llama and most of its descendants fill alike.
STANDARD_MATRICES: Mapping[LayerMatrix, MODEL_TENSOR] = {
    LayerMatrix.Q: MODEL_TENSOR.ATTN_Q, LayerMatrix.K: MODEL_TENSOR.ATTN_K, LayerMatrix.V: MODEL_TENSOR.ATTN_V,
    LayerMatrix.O: MODEL_TENSOR.ATTN_OUT, LayerMatrix.GATE: MODEL_TENSOR.FFN_GATE,
    LayerMatrix.UP: MODEL_TENSOR.FFN_UP, LayerMatrix.DOWN: MODEL_TENSOR.FFN_DOWN,
}
# A layer's FFN when the file has experts (expert_count > 0), instead of GATE, UP, DOWN.
EXPERT_MATRICES: Mapping[LayerMatrix, MODEL_TENSOR] = {
    LayerMatrix.ROUTER: MODEL_TENSOR.FFN_GATE_INP, LayerMatrix.GATE_EXPS: MODEL_TENSOR.FFN_GATE_EXP,
    LayerMatrix.UP_EXPS: MODEL_TENSOR.FFN_UP_EXP, LayerMatrix.DOWN_EXPS: MODEL_TENSOR.FFN_DOWN_EXP,
}
DENSE_FFN = frozenset({LayerMatrix.GATE, LayerMatrix.UP, LayerMatrix.DOWN})
ATTENTION_MATRICES = {slot: kind for slot, kind in STANDARD_MATRICES.items() if slot not in DENSE_FFN}
STANDARD_VECTORS: Mapping[LayerVector, MODEL_TENSOR] = {
    LayerVector.ATTN_NORM: MODEL_TENSOR.ATTN_NORM, LayerVector.FFN_NORM: MODEL_TENSOR.FFN_NORM,
}
# MLA's low-rank query path, which a file with q_lora_rank > 0 has instead of Q (and the
# vector LayerVector.Q_A_NORM between the two).
LOW_RANK_Q = frozenset({LayerMatrix.Q_A, LayerMatrix.Q_B})
# Q, K and V biases, which llama.cpp loads wherever a llama-family file has them (Qwen 2 does).
QKV_BIASES: Mapping[LayerVector, MODEL_TENSOR] = {
    LayerVector.Q_BIAS: MODEL_TENSOR.ATTN_Q, LayerVector.K_BIAS: MODEL_TENSOR.ATTN_K,
    LayerVector.V_BIAS: MODEL_TENSOR.ATTN_V,
}


def tensor_name(kind: MODEL_TENSOR, layer: int | None = None, part: str = "weight") -> str:
    """The GGUF name of a tensor's weight (or bias): blk.3.attn_q.weight."""
    return f"{TENSOR_NAMES[kind].format(bid=layer)}.{part}"


def vector_name(slot: LayerVector, kind: MODEL_TENSOR, layer: int) -> str:
    return tensor_name(kind, layer, "bias" if slot in BIASES else "weight")


@dataclass(frozen=True)
class Architecture:
    """One `general.architecture` as the generic decoder runs it (see the module's docstring)."""

    arch: MODEL_ARCH
    keys: tuple[Key, ...]
    matrices: Mapping[LayerMatrix, MODEL_TENSOR]   # every layer has these
    vectors: Mapping[LayerVector, MODEL_TENSOR]
    # Vectors a file may leave out (llama.cpp: TENSOR_NOT_REQUIRED); the slot then stays empty.
    optional_vectors: Mapping[LayerVector, MODEL_TENSOR] = field(default_factory=dict)
    # A file with experts has these instead of the dense FFN's matrices (in every layer
    # from HParams.n_layer_dense_lead on: moe_layer), and the vectors and shared experts
    # (where HParams.n_expert_shared > 0) below in those layers.
    expert_matrices: Mapping[LayerMatrix, MODEL_TENSOR] = field(default_factory=dict)
    shared_expert_matrices: Mapping[LayerMatrix, MODEL_TENSOR] = field(default_factory=dict)
    expert_vectors: Mapping[LayerVector, MODEL_TENSOR] = field(default_factory=dict)
    optional_expert_vectors: Mapping[LayerVector, MODEL_TENSOR] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # HParams values llama.cpp hard-codes
    # HParams values computed from the others (after `fixed`), e.g. a scale from n_embd.
    derived: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    # Keys (gguf.Keys templates) a file of a variant numallm does not run sets to non-zero
    # values, and what that variant is: refused in one line (model_checks).
    refused_keys: Mapping[str, str] = field(default_factory=dict)
    # An older layout of the architecture's files, converted at load into the one it runs
    # (arch.upgrade): the file itself where it is not one.
    upgrade: Callable[[GGUFFile], GGUFFile] | None = None

    @property
    def name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]

    def key_name(self, key: Key) -> str:
        return key.name.format(arch=self.name)

    def describe(self, md: Mapping[str, Any], path: str) -> ArchSpec:
        """The hyperparameters of a file of this architecture (checked by model_checks first)."""
        values: dict[str, Any] = {}
        for key in self.keys:
            if key.field is None:
                continue
            name = self.key_name(key)
            if name in md:
                values[key.field] = key.kind(md[name])
            elif key.required:
                raise ModelFormatError(f"{path}: required key {name!r} is missing")
            elif key.default is not None:
                values[key.field] = key.default
        values = {**DECODER_DEFAULTS, **_geometry_defaults(values, md, path), **self.fixed}
        values.update(rope_scaling(self.name, values, md, path))
        if self.derived is not None:
            values.update(self.derived(values))
        return ArchSpec(self, HParams(**values))


def _geometry_defaults(values: dict[str, Any], md: Mapping[str, Any], path: str) -> dict[str, Any]:
    """`values` completed by llama.cpp's rules for the keys a file may leave out."""
    tokens = md.get(Keys.Tokenizer.LIST)
    if tokens is None:
        raise ModelFormatError(f"{path}: required key {Keys.Tokenizer.LIST!r} is missing")
    out = dict(values)
    out.setdefault("n_head_kv", out["n_head"])
    out.setdefault("head_dim", out["n_embd"] // out["n_head"])
    out.setdefault("n_rot", out["head_dim"])
    out.setdefault("n_vocab", len(tokens))
    out.setdefault("n_ff_exp", out["n_ff"])  # llama's experts are n_ff wide
    out["n_layer"] -= out.get("n_layer_nextn", 0)  # block_count counts the NextN layers too
    out["rope_base_local"] = out["rope_base"]
    out["attn_scale"] = 1.0 / math.sqrt(out["head_dim"])
    return out


# Every architecture's model-level tensors (the output projection may be absent: tied).
TOKEN_EMBD = tensor_name(MODEL_TENSOR.TOKEN_EMBD)
OUTPUT = tensor_name(MODEL_TENSOR.OUTPUT)
OUTPUT_NORM = tensor_name(MODEL_TENSOR.OUTPUT_NORM)


@dataclass(frozen=True)
class ArchSpec:
    """A file's architecture and hyperparameters."""

    arch: Architecture
    hparams: HParams
    token_embd: str = TOKEN_EMBD
    output: str = OUTPUT  # token_embd doubles as the output projection when absent
    output_norm: str = OUTPUT_NORM
    embeds: bool = True   # holds the token embeddings (false: a pipeline stage after the first)
    outputs: bool = True  # holds the output norm and projection (false: a stage before the last)

    @property
    def name(self) -> str:
        return self.arch.name

    def stage(self, first: int, last: int) -> ArchSpec:
        """The part a pipeline stage holds: layers [first, last), the token embeddings if
        first is 0, the output norm and projection if last is the last layer. Its
        hparams.n_layer counts its own layers, numbered from 0 (layer0 is the first's)."""
        hp = self.hparams
        if not 0 <= first < last <= hp.n_layer:
            raise ValueError(f"layers [{first}, {last}) are not a range of the model's {hp.n_layer}")
        return replace(self, hparams=hp._replace(n_layer=last - first, layer0=hp.layer0 + first),
                       embeds=self.embeds and first == 0, outputs=self.outputs and last == hp.n_layer)

    def matrix_names(self, layer: int) -> dict[LayerMatrix, str]:
        """Layer `layer`'s matrices by slot, in slot order: in a mixture-of-experts layer,
        the router and the experts' (and the shared experts') in place of the dense FFN's;
        with q_lora_rank > 0 the low-rank query pair in place of Q."""
        unused = {LayerMatrix.Q} if self.hparams.q_lora_rank else LOW_RANK_Q
        slots = {slot: kind for slot, kind in self.arch.matrices.items() if slot not in unused}
        if moe_layer(self.hparams, layer):
            slots = {slot: kind for slot, kind in slots.items() if slot not in DENSE_FFN} | self.arch.expert_matrices
            if self.hparams.n_expert_shared > 0:
                slots |= self.arch.shared_expert_matrices
        return {slot: tensor_name(kind, self.hparams.layer0 + layer) for slot, kind in sorted(slots.items())}

    def vector_names(self, layer: int) -> dict[LayerVector, str]:
        """Layer `layer`'s vectors the file must have, by slot."""
        return self._vectors(layer, self.arch.vectors, self.arch.expert_vectors)

    def optional_vector_names(self, layer: int) -> dict[LayerVector, str]:
        """Layer `layer`'s vectors the file may have, by slot."""
        return self._vectors(layer, self.arch.optional_vectors, self.arch.optional_expert_vectors)

    def _vectors(self, layer: int, every: Mapping[LayerVector, MODEL_TENSOR],
                 experts: Mapping[LayerVector, MODEL_TENSOR]) -> dict[LayerVector, str]:
        slots = {**every, **experts} if moe_layer(self.hparams, layer) else every
        return {slot: vector_name(slot, kind, self.hparams.layer0 + layer) for slot, kind in sorted(slots.items())
                if self.hparams.q_lora_rank or slot != LayerVector.Q_A_NORM}
