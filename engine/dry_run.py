"""`numallm placement --dry-run`: plan a model's placement from its GGUF tensor table
alone, reading no weight (a file cut after its tensor table will do), so a user can ask
whether a model fits a machine, and how, before downloading it.

The planner needs no architecture module: any file whose tensor names are llama.cpp's
(gguf's TENSOR_NAMES) is planned, from the shapes and types in its table and a few
hyperparameters (layers, heads, head sizes, the MLA latent, experts used). Each matrix
is split among the workers as the forward pass splits a dense one (gate and up cut
together, and a layer's routed and shared experts' down); an expert tensor is one
matrix per expert, read by expert_used_count of expert_count tokens' worth. Vectors
(norms, biases) are left out, as they are of numa/placement's plans, and so are NextN
layers (not run). The KV cache is the engine's (K and V per KV head), or for MLA
(kv_lora_rank in the file) the latent and the RoPE key part, one shared head kept on
every node whose workers attend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import TENSOR_NAMES
from numallm import kernels
from numallm.engine.gguf_file import GGUFFile, TensorInfo
from numallm.engine.kv_cache import KV_ITEMSIZE
from numallm.errors import BadInputError, ModelFormatError
from numallm.numa.placement import (
    PARTIAL,
    KvHeads,
    Matrix,
    PlacementPlan,
    build_plan,
    choose_mode,
    fitting_groups,
    locality,
    memory_shortage,
)
from numallm.numa.topology import Topology
from numallm.numa.workers import WorkerSlot

# The base names llama.cpp gives a layer's tensors (blk.{bid}.attn_q -> attn_q) and the others'.
_LAYER_NAMES = frozenset(v.split(".", 2)[2] for v in TENSOR_NAMES.values() if v.startswith("blk.{bid}."))
_MODEL_NAMES = frozenset(v for v in TENSOR_NAMES.values() if "{" not in v)
_COMPARED = ("mirror", "distribute", "interleave")  # the modes every dry run weighs


def file_matrices(gf: GGUFFile) -> tuple[Matrix, ...]:
    """The file's matrices as numa/placement plans them (see the module's docstring)."""
    n_used = _expert_used(gf)
    trunk = _trunk_layers(gf)
    tensors = {t.name.removesuffix(".weight"): t for t in gf.tensors.values()
               if len(t.shape) >= 2 and not _nextn(t.name, trunk)}
    for name in tensors:
        parts = name.split(".")
        known = (parts[0] == "blk" and len(parts) == 3 and parts[1].isdigit() and parts[2] in _LAYER_NAMES) or (
            len(parts) == 1 and name in _MODEL_NAMES)
        if not known:
            raise BadInputError(f"{gf.path}: tensor {name!r} is not one of llama.cpp's tensor names, so its "
                                "place in the forward pass is unknown; --dry-run plans only such files")
    if "token_embd" not in tensors:
        raise ModelFormatError(f"{gf.path}: tensor 'token_embd.weight' is missing")
    out: list[Matrix] = []
    for name, t in tensors.items():
        group = max([_row_group(t), *(_row_group(p) for p in _cut_with(name, tensors))])
        if name == "token_embd":
            tied = "output" not in tensors
            out.append(Matrix(name, t.rows, t.row_bytes, group, matmul=tied, lookup=True))
        elif name.endswith("_exps") and len(t.shape) == 3:
            n_expert = t.shape[2]
            if not 0 < n_used <= n_expert:
                raise ModelFormatError(f"{gf.path}: expert_used_count {n_used} is not within 1..{n_expert}, "
                                       f"the experts of {t.name!r}")
            rows = t.rows // n_expert
            out.extend(Matrix(f"{name}.{e}", rows, t.row_bytes, group, read_share=n_used / n_expert)
                       for e in range(n_expert))
        elif name.endswith(_PER_HEAD) and len(t.shape) == 3:  # cut between heads, as weights.matrix_tables
            out.append(Matrix(name, t.rows, t.row_bytes, t.shape[1]))
        else:
            out.append(Matrix(name, t.rows, t.row_bytes, group))
    return tuple(out)


# Tensors of one block of rows per query head (slots.PER_HEAD): MLA's attn_k_b and attn_v_b.
_PER_HEAD = ("attn_k_b", "attn_v_b")


# Cut with one part() call on the larger row group, as forward.py cuts them
# (engine/placement_inputs.py's _CUT_TOGETHER, by the file's names).
_PAIRS = (("ffn_gate", "ffn_up"), ("ffn_gate_exps", "ffn_up_exps"), ("ffn_gate_shexp", "ffn_up_shexp"),
          ("ffn_down_exps", "ffn_down_shexp"))
_PARTNER = {**dict(_PAIRS), **{b: a for a, b in _PAIRS}}


def _cut_with(name: str, tensors: Mapping[str, TensorInfo]) -> list[TensorInfo]:
    """The tensor a matrix is cut together with, if any (ffn_gate_exps with ffn_up_exps, ...)."""
    parts = name.split(".")
    if len(parts) != 3 or parts[2] not in _PARTNER:
        return []
    other = f"{parts[0]}.{parts[1]}.{_PARTNER[parts[2]]}"
    return [tensors[other]] if other in tensors else []


def _row_group(t: TensorInfo) -> int:
    try:
        return kernels.row_group(t.qtype)
    except KeyError:  # a type the kernels lack: planned in rows, the load would refuse it
        return 1


def _hparam(gf: GGUFFile, key: str, default: int | None = None) -> int:
    value = gf.metadata.get(f"{gf.architecture}.{key}", default)
    if value is None:
        raise ModelFormatError(f"{gf.path}: required key '{gf.architecture}.{key}' is missing")
    try:
        return int(max(value) if hasattr(value, "__len__") else value)  # per-layer arrays: the largest
    except (TypeError, ValueError):
        raise ModelFormatError(f"{gf.path}: key '{gf.architecture}.{key}' is not a number: {value!r}") from None


def _expert_used(gf: GGUFFile) -> int:
    return _hparam(gf, "expert_used_count", 0)


def _trunk_layers(gf: GGUFFile) -> int:
    """The layers that run: block_count less the NextN (multi-token prediction) layers
    after them, which llama.cpp does not load unless asked and numallm never runs."""
    return _hparam(gf, "block_count") - _hparam(gf, "nextn_predict_layers", 0)


def _nextn(name: str, trunk: int) -> bool:
    parts = name.split(".")
    return parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) >= trunk


def file_kv(gf: GGUFFile, n_ctx: int, kv_type: str = "f16", n_slots: int = 1) -> KvHeads:
    """The KV cache the file's hyperparameters call for (see the module's docstring)."""
    if kv_type not in KV_ITEMSIZE:
        raise BadInputError(f"cache type {kv_type!r} is not supported (use one of {', '.join(KV_ITEMSIZE)})")
    per_position = n_slots * _trunk_layers(gf) * n_ctx * KV_ITEMSIZE[kv_type]
    n_head = _hparam(gf, "attention.head_count")
    rank = _hparam(gf, "attention.kv_lora_rank", 0)
    if rank:
        return KvHeads(n_head, 1, per_position * (rank + _hparam(gf, "rope.dimension_count")))
    n_kv = _hparam(gf, "attention.head_count_kv", n_head)
    head_dim = _hparam(gf, "embedding_length") // n_head
    k, v = _hparam(gf, "attention.key_length", head_dim), _hparam(gf, "attention.value_length", head_dim)
    return KvHeads(n_head, n_kv, per_position * (k + v))


def context_size(gf: GGUFFile, ctx_size: int | None, default: int) -> int:
    """The context to plan for: ctx_size, or min(the file's trained context, default)."""
    n_ctx = int(ctx_size) if ctx_size else min(_hparam(gf, "context_length", default), default)
    if n_ctx <= 0:
        raise BadInputError(f"--ctx-size must be positive, got {n_ctx}")
    return n_ctx


def dry_run(gf: GGUFFile, topo: Topology, workers: list[WorkerSlot], *, numa: str, numa_node: int | None,
            mirror_budget: int | None, n_ctx: int, kv_type: str) -> dict[str, Any]:
    """The plan --numa `numa` would make on `topo` for these workers, and what mirror,
    distribute, interleave and auto's partial mirror would each need per node."""
    matrices = file_matrices(gf)
    kv = file_kv(gf, n_ctx, kv_type)
    choice = choose_mode(numa, topo, workers, matrices, kv, mirror_budget)
    plan = build_plan(choice.mode, topo, workers, matrices, kv, numa_node, choice.groups)
    short = memory_shortage(plan, topo)
    compared: dict[str, Any] = {}
    if len(plan.nodes) > 1:
        compared = {mode: _needs(build_plan(mode, topo, workers, matrices, kv), topo) for mode in _COMPARED}
        groups = fitting_groups(topo, workers, matrices, kv)
        if any(g.placement == "mirror" for g in groups) and any(g.placement != "mirror" for g in groups):
            compared[PARTIAL] = _needs(build_plan(PARTIAL, topo, workers, matrices, kv, groups=groups), topo)
    return {
        "dry_run": True,
        "model": gf.path,
        "architecture": gf.architecture,
        "n_ctx": n_ctx,
        "mode": plan.mode,
        "why": choice.reason,
        "fits": short is None,
        "memory": short,
        "weight_bytes": sum(m.nbytes for m in matrices),
        "kv_bytes": kv.n_head_kv * kv.head_bytes,
        "kv_bytes_per_token": kv.n_head_kv * kv.head_bytes // n_ctx,
        "nodes": _nodes(plan, topo),
        "groups": [{"name": g.name, "placement": g.placement, "why": g.why, "bytes": g.nbytes,
                    "read_bytes_per_token": round(g.read_bytes)} for g in plan.groups],
        "per_token": {**locality(plan), "read_bytes": round(sum(g.read_bytes for g in plan.groups))},
        "modes": compared,
    }


def _nodes(plan: PlacementPlan, topo: Topology) -> list[dict[str, Any]]:
    weights, kv = plan.weight_bytes_per_node() or {}, plan.kv_bytes_per_node() or {}
    on_cpu = plan.workers_per_node()
    return [{"os_index": n, "workers": on_cpu.get(n, 0), "weight_bytes": weights.get(n), "kv_bytes": kv.get(n),
             "free_bytes": topo.node(n).free_bytes} for n in plan.nodes]


def _needs(plan: PlacementPlan, topo: Topology) -> dict[str, Any]:
    weights, kv = plan.weight_bytes_per_node() or {}, plan.kv_bytes_per_node() or {}
    short = memory_shortage(plan, topo)
    return {"fits": short is None, "memory": short,
            "mirrored": sorted(plan.mirrored) if plan.mode == PARTIAL else None,
            "need_bytes": {str(n): weights.get(n, 0) + kv.get(n, 0) for n in plan.nodes}}
