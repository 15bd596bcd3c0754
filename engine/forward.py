"""The generic decoder forward pass, one Numba function per batch of tokens.

Every architecture in engine/arch maps onto this: the weights sit in one flat buffer
per node (each node's copy or shard, at the same offsets), located by the tables of
engine/arch/slots.py, the hyperparameters in one HParams record, and the whole pass
over all layers runs inside compiled code without the GIL, so a pinned worker thread
can run it without per-op trips through Python. Every matrix product goes through
numallm.kernels; this module only does the small vector work in between (norms,
rotary embeddings, attention, activations). A step whose slot an architecture leaves
empty (a post-norm, a q/k norm, a bias) is skipped.

The KV cache is engine/kv_cache.py's K and V arrays, [slot, layer, kv_head, position,
width], float32 or float16 bits stored as uint16 (Numba has no float16 type;
kernels/dense/kvrow.py reads them); multi-head latent attention caches its latent and
rotated key part there (_mla).

NUMA: each worker is handed its own node's weight buffer (same offsets in every
node's copy or shard) and its own node's KV arrays. A worker reads only the rows it
computes and the KV heads its query heads attend with; it writes the KV heads
kv_writers() gives it into its node's arrays, so every KV head a node's workers read
is written on that node by one of them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from numallm.engine.arch.slots import (
    LayerMatrix,
    LayerVector,
    MatrixEntry,
    MatrixTable,
    ModelMatrix,
    ModelVector,
    VectorTable,
    WeightTables,
)
from numallm.engine.arch.spec import (
    ACT_SILU,
    GATING_SIGMOID,
    YARN_BETA_FAST,
    YARN_BETA_SLOW,
    HParams,
    sliding_window_layer,
    value_dim,
)
from numallm.engine.barrier import barrier_wait
from numallm.engine.ggml_sort import STACK_ROWS, argsort_desc_into
from numallm.engine.paths import step_if
from numallm.kernels import (
    exp_shifted,
    get_rows_in,
    kv_put,
    matmul_in,
    matvec_in,
    rows_axpy,
    rows_axpy_x4,
    rows_dot,
    rows_dot_x4,
    silu_mul,
)
from numallm.numa import split
from numallm.numa.split import part_jit as part


ROUTER_DECIDES = np.zeros((0, 0, 0), np.int32)
EMBED_TOKENS = np.zeros((0, 0), np.float32)


class Batch(NamedTuple):
    """The tokens of one forward call (int32 arrays), and what it returns of them."""

    tokens: np.ndarray     # [n]
    slots: np.ndarray      # [n]: the cache slot (sequence) of each token
    positions: np.ndarray  # [n]: its position in that sequence
    out_rows: np.ndarray   # [m]: the tokens whose logits are wanted, in order
    hidden: bool = False   # their final hidden states (after output_norm) instead: embeddings
    # [n, n_layer, n_expert_used]: experts to route token t to in a layer instead of the
    # router's choice, where >= 0 (tests replay llama.cpp's); ROUTER_DECIDES: none.
    routing: np.ndarray = ROUTER_DECIDES
    # A pipeline stage's (cluster/): the residual stream entering its first layer, float32
    # [n, n_embd] (EMBED_TOKENS: the tokens' embeddings), and whether out_rows get the
    # stream leaving its last layer, for the next stage, instead of logits.
    states: np.ndarray = EMBED_TOKENS
    residual: bool = False


class Scratch(NamedTuple):
    """The activations the workers of a group share, float32 [n tokens, width], and the
    mixture-of-experts FFN's working arrays, one of each per worker [n_workers, ...]:
    sized once for a batch size, so that no layer allocates."""

    x: np.ndarray    # the residual stream [n, n_embd]
    q: np.ndarray    # [n, n_head * head_dim]
    k: np.ndarray    # [n, n_head_kv * head_dim]; multi-head latent attention: [n, kv_lora_rank + n_rot]
    v: np.ndarray    # [n, n_head_kv * head_dim]; multi-head latent attention: [n, 0]
    qa: np.ndarray   # multi-head latent attention's low-rank query [n, q_lora_rank]
    att: np.ndarray  # attention output [n, n_head * value_dim]
    tmp: np.ndarray  # a projection back to the residual [n, n_embd]
    g: np.ndarray    # FFN gate, then gate * up [n, n_ff]
    u: np.ndarray    # FFN up [n, n_ff]
    router: np.ndarray  # a mixture-of-experts layer's router logits [n, n_expert]
    eg: np.ndarray   # the chosen experts' gate, then gate * up [n * n_expert_used, n_ff_exp],
    eu: np.ndarray   # and up, a row per (token, choice) grouped by expert
    sg: np.ndarray   # the shared experts' gate, then gate * up [n, n_ff_exp * n_expert_shared],
    su: np.ndarray   # and up
    sh: np.ndarray   # and their output [n, n_embd]
    # per worker (each routes every token alike, see _experts):
    xe: np.ndarray       # one expert's tokens [n_workers, n, n_embd]
    ye: np.ndarray       # and its output
    y: np.ndarray        # each (token, choice)'s output [n_workers, n * n_expert_used, n_embd]
    chosen: np.ndarray   # int64 [n_workers, n, n_expert_used]: each token's experts, in order
    weights: np.ndarray  # and their weights
    probs: np.ndarray    # one token's expert probabilities [n_workers, n_expert],
    select: np.ndarray   # and the scores it chooses by
    group: np.ndarray    # the expert groups' scores [n_workers, n_expert]
    order: np.ndarray    # int64 [n_workers, max(n_expert, n * n_expert_used)]: argsort's, then by-expert's
    start: np.ndarray    # int64 [n_workers, n_expert + 1]: each expert's first pair in `order`
    stack: np.ndarray    # int64 [n_workers, STACK_ROWS, 3]: argsort's


def scratch(hp: HParams, n: int, n_workers: int = 1) -> Scratch:
    """Zeroed activations for a batch of n tokens run by n_workers workers."""
    qdim, kvdim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    kdim, vdim = (hp.kv_lora_rank + hp.n_rot, 0) if hp.kv_lora_rank else (kvdim, kvdim)
    pairs = n * hp.n_expert_used
    shexp = hp.n_ff_exp * hp.n_expert_shared
    w = n_workers
    m = n if hp.n_expert else 0  # a dense model has no experts to gather tokens for
    shapes = Scratch(x=(n, hp.n_embd), q=(n, qdim), k=(n, kdim), v=(n, vdim), qa=(n, hp.q_lora_rank),
                     att=(n, hp.n_head * value_dim(hp)), tmp=(n, hp.n_embd),
                     g=(n, hp.n_ff), u=(n, hp.n_ff), router=(n, hp.n_expert), eg=(pairs, hp.n_ff_exp),
                     eu=(pairs, hp.n_ff_exp), sg=(n, shexp), su=(n, shexp), sh=(n, hp.n_embd if shexp else 0),
                     xe=(w, m, hp.n_embd), ye=(w, m, hp.n_embd), y=(w, pairs, hp.n_embd),
                     chosen=(w, n, hp.n_expert_used), weights=(w, n, hp.n_expert_used), probs=(w, hp.n_expert),
                     select=(w, hp.n_expert), group=(w, hp.n_expert), order=(w, max(hp.n_expert, pairs)),
                     start=(w, hp.n_expert + 1), stack=(w, STACK_ROWS, 3))
    ints = {"chosen", "order", "start", "stack"}
    return Scratch(*(np.zeros(shape, np.int64 if f in ints else np.float32)
                     for f, shape in zip(Scratch._fields, shapes)))


class WorkerMemory(NamedTuple):
    """What one worker reads and writes on its home node."""

    wbuf: np.ndarray      # uint8: the node's weight buffer
    k: np.ndarray         # the node's K cache
    v: np.ndarray         # and V cache
    kv_heads: np.ndarray  # int64: the KV heads this worker writes there (kv_writers)


def plain(record: tuple) -> tuple:
    """A record (a NamedTuple, maybe of NamedTuples) as plain tuples, which is how
    forward() takes its records: Numba types every call's arguments, a plain tuple of
    arrays or numbers in C, a NamedTuple in Python field by field, holding the GIL."""
    return tuple(plain(f) if isinstance(f, tuple) else f for f in record)


@njit(nogil=True)
def _weight_tables(t):
    """plain(WeightTables) back to the record."""
    layer, model, layer_vec, model_vec, vecs = t
    return WeightTables(MatrixTable(*layer), MatrixTable(*model), VectorTable(*layer_vec), VectorTable(*model_vec), vecs)


_sliding_window_layer = njit(nogil=True)(sliding_window_layer)


@njit(nogil=True)
def _copy_rows(dst, src, rows):
    """dst[i] = src[rows[i]], element by element: an assignment of arrays would compile
    the string formatting of Numba's shape error into the pass (a second or two)."""
    if dst.shape[0] != rows.shape[0] or dst.shape[1] != src.shape[1]:
        raise ValueError("_copy_rows: dst must be [len(rows), src columns]")
    for i in range(rows.shape[0]):
        for c in range(dst.shape[1]):
            dst[i, c] = src[rows[i], c]


@njit(nogil=True)
def _entry(tab, idx):
    """Matrix tab[idx] as one record, so that what reads it is compiled once for every table."""
    return MatrixEntry(tab.qtype[idx], tab.rows[idx], tab.cols[idx], tab.offset[idx], tab.nbytes[idx],
                       tab.row_group[idx])


# Cached on its own (like _attention and _gated): install.sh's warm-up compiles it in a
# second process while the first compiles the rest (scripts/compile_plan.py).
@njit(nogil=True, cache=True)
def _matmul(e, wbuf, x, out, r0, r1, ks):
    """out[:, r0:r1] = x @ W[r0:r1].T for matrix entry e through the kernels of set ks
    (matvec for one token)."""
    if r0 >= r1:
        return
    w = wbuf[e.offset:e.offset + e.nbytes]
    if x.shape[0] == 1:
        matvec_in(ks, e.qtype, w, e.rows, e.cols, x[0], out[0], r0, r1)
    else:
        matmul_in(ks, e.qtype, w, e.rows, e.cols, x, out, r0, r1)


@njit(nogil=True)
def _share(e, worker, n_workers):
    """This worker's rows of matrix entry e."""
    return part(e.rows, e.row_group, worker, n_workers)


@njit(nogil=True, fastmath=False)
def _rmsnorm(x, w, eps, out):
    # Sum of squares in float64 as ggml does (ggml_float); the rest in float32.
    n, d = x.shape
    for t in range(n):
        scale = np.float32(1.0 / math.sqrt(_sum_squares(x, t) / d + eps))
        for i in range(d):
            out[t, i] = x[t, i] * scale * w[i]


@njit(nogil=True, fastmath={"reassoc"})
def _sum_squares(x, t):
    """Row t's sum of squares in float64, in vector lanes (reassociated: a float64 sum
    of float32 squares differs from the sequential one by about 1e-16, relatively)."""
    ss = 0.0
    for i in range(x.shape[1]):
        ss += np.float64(x[t, i]) * x[t, i]
    return ss


@njit(nogil=True)
def _head_rmsnorm(h, w, eps):
    ss = 0.0
    for i in range(h.shape[0]):
        ss += np.float64(h[i]) * h[i]
    scale = np.float32(1.0 / math.sqrt(ss / h.shape[0] + eps))
    for i in range(h.shape[0]):
        h[i] = h[i] * scale * w[i]


@njit(nogil=True)
def _yarn_corr_dims(n_rot, n_ctx_orig, base):
    """ggml_rope_yarn_corr_dims: YaRN's ramp runs from pair `low` (original angles below)
    to pair `high` (scaled angles above)."""
    def dim(beta):
        return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))
    return max(0.0, math.floor(dim(YARN_BETA_FAST))), min(n_rot - 1.0, math.ceil(dim(YARN_BETA_SLOW)))


@njit(nogil=True)
def _rope_tables(positions, n_rot, base, freq_scale, hp):
    """cos and sin [n, n_rot / 2] of every token's pair angles, as ggml_rope_cache_init
    and rope_yarn compute them: angles times freq_scale, with YaRN (ext_factor != 0)
    mixed with the unscaled ones along a ramp over the pairs, and the magnitude
    attn_factor, times 1 + 0.1 ln(1 / freq_scale) with YaRN."""
    n = positions.shape[0]
    half = n_rot // 2
    cos = np.empty((n, half), np.float32)
    sin = np.empty((n, half), np.float32)
    # ggml multiplies theta by theta_scale pair after pair, in float32.
    theta_scale = np.float32(base ** (-2.0 / n_rot))
    scale = np.float32(freq_scale)
    ext = np.float32(hp.rope_ext_factor)
    mscale = np.float32(hp.rope_attn_factor)
    low, high = 0.0, 1.0
    if ext != 0.0:
        low, high = _yarn_corr_dims(n_rot, hp.rope_n_ctx_orig, base)
        mscale = np.float32(mscale * np.float32(1.0 + 0.1 * math.log(1.0 / scale)))
    for t in range(n):
        theta_extrap = np.float32(positions[t])
        for i in range(half):
            theta = np.float32(scale * theta_extrap)
            if ext != 0.0:
                y = np.float32((i - low) / max(0.001, high - low))
                mix = np.float32(np.float32(1.0) - min(np.float32(1.0), max(np.float32(0.0), y))) * ext
                theta = np.float32(theta * (np.float32(1.0) - mix) + theta_extrap * mix)
            cos[t, i] = np.float32(math.cos(theta)) * mscale
            sin[t, i] = np.float32(math.sin(theta)) * mscale
            theta_extrap = np.float32(theta_extrap * theta_scale)
    return cos, sin


@njit(nogil=True)
def _rope_head(h, n_rot, neox, cos, sin, t):
    """Rotate one head h in place by token t's rows of cos/sin."""
    half = n_rot // 2
    for i in range(half):
        if neox:
            a, b = i, i + half
        else:
            a, b = 2 * i, 2 * i + 1
        x0 = h[a]
        x1 = h[b]
        h[a] = x0 * cos[t, i] - x1 * sin[t, i]
        h[b] = x0 * sin[t, i] + x1 * cos[t, i]


@njit(nogil=True, cache=True)
def _attention(q, kc, vc, slots, positions, il, hp, window, out, h0, h1):
    """Causal attention of query heads [h0, h1) of every token over its slot's cache;
    four tokens of one slot and window start at a time where the head dimension allows
    (kvrow's _x4 functions: the same bits as one at a time)."""
    n = q.shape[0]
    hd = hp.head_dim
    group = hp.n_head // hp.n_head_kv
    stride = positions.max() + 1
    scores = np.empty(4 * stride, np.float32)
    # Private copies, and the caches flat (rows_dot's addressing): no view per head
    # of arrays every worker shares, whose reference counts they would contend for.
    q4 = np.empty(4 * hd, np.float32)
    acc = np.empty(4 * hd, np.float32)
    ends = np.empty(4, np.int64)
    kf = kc.reshape(-1)
    vf = vc.reshape(-1)
    _, n_layer, n_kv, n_ctx, _ = kc.shape
    scale = np.float32(hp.attn_scale)
    t = 0
    while t < n:
        start = _window_start(positions[t], window)
        m = 1
        if hd % 64 == 0 and t + 4 <= n:
            m = 4
            for k in range(1, 4):
                if slots[t + k] != slots[t] or _window_start(positions[t + k], window) != start:
                    m = 1
        for k in range(m):
            ends[k] = positions[t + k] + 1
        for h in range(h0, h1):
            base = ((slots[t] * n_layer + il) * n_kv + h // group) * n_ctx * hd
            for k in range(m):
                for i in range(hd):
                    q4[k * hd + i] = q[t + k, h * hd + i]
            done = start  # rows each query's scores have so far
            if m == 4:
                done = min(min(ends[0], ends[1]), min(ends[2], ends[3]))
                rows_dot_x4(q4, kf, base, start, done, scale, scores, stride)
            for k in range(m):
                sk = scores[k * stride:(k + 1) * stride]
                rows_dot(q4[k * hd:(k + 1) * hd], kf, base, done, ends[k], scale, sk)
                mx = np.float32(-np.inf)
                for j in range(start, ends[k]):
                    if sk[j] > mx:
                        mx = sk[j]
                inv = np.float32(1.0 / exp_shifted(sk, start, ends[k], mx))
                for j in range(start, ends[k]):  # the weights rows_axpy would scale by inv
                    sk[j] *= inv
            acc[:] = 0.0
            if m == 4:
                rows_axpy_x4(acc, scores, stride, vf, base, start, ends)
            else:
                rows_axpy(acc[:hd], scores, np.float32(1.0), vf, base, start, ends[0])
            for k in range(m):
                for i in range(hd):
                    out[t + k, h * hd + i] = acc[k * hd + i]
        t += m


@njit(nogil=True)
def _window_start(p, window):
    """The first position a query at position p attends to (window 0: all)."""
    return p - window + 1 if window > 0 and p - window + 1 > 0 else 0


@njit(nogil=True)
def _mla(worker, n_workers, bar, hp, w, il, wbuf, xn, s, kc, vc, kv_heads, slots, positions, cos, sin, qh0, qh1, ks):
    """Layer il's multi-head latent attention of xn into s.att, as deepseek2.cpp's absorbed
    form (the latent cache of engine/kv_cache.py: K the normed latent, V the rotated key).

    The workers share the rows of attn_kv_a_mqa and of the query projections (attn_q, or
    attn_q_a, its norm and attn_q_b); each node's writer (kv_heads: the latent's one KV
    head) norms and rotates every token's latent and key part into its node's cache; then
    each worker runs its query heads whole: attn_k_b folds a head's query into the
    latent's space, the scores are over the cached latent plus the rotated keys, the
    weighted latents go through the head's attn_v_b."""
    lm, lv, vecs = w.layer, w.layer_vec, w.vecs
    n = xn.shape[0]
    r, n_rot, hd, dv = hp.kv_lora_rank, hp.n_rot, hp.head_dim, hp.head_dim_v
    nope = hd - n_rot
    eps = np.float32(hp.rms_eps)
    e = _entry(lm, (il, LayerMatrix.KV_A_MQA))
    r0, r1 = _share(e, worker, n_workers)
    _matmul(e, wbuf, xn, s.k, r0, r1, ks)
    if hp.q_lora_rank > 0:
        e = _entry(lm, (il, LayerMatrix.Q_A))
        r0, r1 = _share(e, worker, n_workers)
        _matmul(e, wbuf, xn, s.qa, r0, r1, ks)
        barrier_wait(bar, n_workers)
        qa = np.empty((n, hp.q_lora_rank), np.float32)  # every worker norms all of it, privately
        _rmsnorm(s.qa, _vec(vecs, lv, (il, LayerVector.Q_A_NORM)), eps, qa)
        e = _entry(lm, (il, LayerMatrix.Q_B))
        r0, r1 = _share(e, worker, n_workers)
        _matmul(e, wbuf, qa, s.q, r0, r1, ks)
    else:
        e = _entry(lm, (il, LayerMatrix.Q))
        r0, r1 = _share(e, worker, n_workers)
        _matmul(e, wbuf, xn, s.q, r0, r1, ks)
        barrier_wait(bar, n_workers)  # the latent (its norm needs the whole row)
    if kv_heads.shape[0] > 0:
        kv_norm = _vec(vecs, lv, (il, LayerVector.KV_A_NORM))
        latent = np.empty(r, np.float32)
        pe = np.empty(n_rot, np.float32)
        for t in range(n):
            for i in range(r):
                latent[i] = s.k[t, i]
            _head_rmsnorm(latent, kv_norm, eps)
            kv_put(kc[slots[t], il, 0, positions[t]], latent)
            for i in range(n_rot):
                pe[i] = s.k[t, r + i]
            _rope_head(pe, n_rot, hp.rope_neox, cos, sin, t)
            kv_put(vc[slots[t], il, 0, positions[t]], pe)
    barrier_wait(bar, n_workers)

    kb, vb = _entry(lm, (il, LayerMatrix.K_B)), _entry(lm, (il, LayerMatrix.V_B))
    q_nope = np.empty((n, nope), np.float32)
    q_lat = np.empty((n, r), np.float32)   # a head's queries absorbed into the latent's space
    out_lat = np.empty((n, r), np.float32)  # and its weighted latents
    out_v = np.empty((n, dv), np.float32)
    q_pe = np.empty(n_rot, np.float32)
    scores = np.empty(positions.max() + 1, np.float32)
    scores_pe = np.empty(positions.max() + 1, np.float32)
    kf, vf = kc.reshape(-1), vc.reshape(-1)
    n_layer, n_ctx = kc.shape[1], kc.shape[3]
    scale = np.float32(hp.attn_scale)
    for h in range(qh0, qh1):
        for t in range(n):
            for i in range(nope):
                q_nope[t, i] = s.q[t, h * hd + i]
        _matmul(_expert(kb, h, hp.n_head), wbuf, q_nope, q_lat, 0, r, ks)
        for t in range(n):
            p = positions[t]
            for i in range(n_rot):
                q_pe[i] = s.q[t, h * hd + nope + i]
            _rope_head(q_pe, n_rot, hp.rope_neox, cos, sin, t)
            row = (slots[t] * n_layer + il) * n_ctx  # the one KV head's first position
            rows_dot(q_lat[t], kf, row * r, 0, p + 1, scale, scores)
            rows_dot(q_pe, vf, row * n_rot, 0, p + 1, scale, scores_pe)
            mx = np.float32(-np.inf)
            for j in range(p + 1):
                scores[j] += scores_pe[j]
                if scores[j] > mx:
                    mx = scores[j]
            total = exp_shifted(scores, 0, p + 1, mx)
            out_lat[t] = 0.0
            rows_axpy(out_lat[t], scores, np.float32(1.0 / total), kf, row * r, 0, p + 1)
        _matmul(_expert(vb, h, hp.n_head), wbuf, out_lat, out_v, 0, dv, ks)
        for t in range(n):
            for i in range(dv):
                s.att[t, h * dv + i] = out_v[t, i]


@njit(nogil=True)
def _gelu_tanh(x):
    return np.float32(0.5) * x * (np.float32(1.0) + np.float32(
        math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))))


@njit(nogil=True)
def _add_residual(x, tmp, c0, c1, norm_w, eps):
    """x[:, c0:c1] += tmp[:, c0:c1], RMS-normalised over whole rows first if norm_w is given."""
    n, d = tmp.shape
    for t in range(n):
        scale = np.float32(1.0)
        if norm_w.shape[0] > 0:
            scale = np.float32(1.0 / math.sqrt(_sum_squares(tmp, t) / d + eps))
        for i in range(c0, c1):
            if norm_w.shape[0] > 0:
                x[t, i] += tmp[t, i] * scale * norm_w[i]
            else:
                x[t, i] += tmp[t, i]


@njit(nogil=True)
def _add_bias(out, bias, r0, r1):
    """out[:, r0:r1] += bias[r0:r1] (nothing for an empty slot)."""
    if bias.shape[0] == 0:
        return
    for t in range(out.shape[0]):
        for i in range(r0, r1):
            out[t, i] += bias[i]


@njit(nogil=True)
def _vec(vecs, tab, idx):
    """Vector tab[idx] (empty for an empty slot)."""
    return vecs[tab.offset[idx]:tab.offset[idx] + tab.length[idx]]


# build_moe_ffn clamps the chosen weights' sum to float16's smallest normal before dividing.
_WEIGHTS_SUM_MIN = np.float32(6.103515625e-5)


@njit(nogil=True)
def _route(logits, hp, bias, routing, il, chosen, weights, p, sel, group, order, stack):
    """Each token's hp.n_expert_used experts (chosen), best first, and their weights, as
    build_moe_ffn: the experts' probabilities p by softmax (ggml_soft_max) or sigmoid,
    the choice by p + bias (exp_probs_b, where given) within the best expert groups
    (_choose), the weights the unbiased p of the chosen, divided by their sum if
    hp.expert_weights_norm, times hp.expert_weights_scale unless that is 0 or 1 (llama.cpp's
    "not set"). routing[t, il], where its first entry is >= 0 (Batch.routing), are token
    t's experts instead. p, sel, group, order and stack are the caller's working arrays."""
    n, n_expert = logits.shape
    k = hp.n_expert_used
    for t in range(n):
        if hp.expert_gating == GATING_SIGMOID:
            for e in range(n_expert):
                p[e] = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-logits[t, e])))
        else:
            mx = logits[t].max()
            total = 0.0  # ggml_float
            for e in range(n_expert):
                p[e] = np.float32(math.exp(logits[t, e] - mx))
                total += p[e]
            scale = np.float32(1.0 / total)
            for e in range(n_expert):
                p[e] *= scale
        if routing.shape[0] > 0 and routing[t, il, 0] >= 0:
            for j in range(k):
                chosen[t, j] = routing[t, il, j]
        else:
            _choose(p, bias, hp, sel, group, order, stack)
            for j in range(k):
                chosen[t, j] = order[j]
        wsum = 0.0  # ggml_sum_rows' ggml_float
        for j in range(k):
            weights[t, j] = p[chosen[t, j]]
            wsum += weights[t, j]
        if hp.expert_weights_norm:
            total_w = max(np.float32(wsum), _WEIGHTS_SUM_MIN)
            for j in range(k):
                weights[t, j] = weights[t, j] / total_w
        if hp.expert_weights_scale != 0.0 and hp.expert_weights_scale != 1.0:
            w_scale = np.float32(hp.expert_weights_scale)
            for j in range(k):
                weights[t, j] *= w_scale


@njit(nogil=True)
def _choose(p, bias, hp, sel, group, order, stack):
    """order[:n_expert]: the experts by selection score sel = p + bias, best first in
    ggml_argsort's order (ties included: engine/ggml_sort.py). With expert groups, the
    experts outside the hp.n_group_used groups of best score (the sum of the group's two
    best, as build_moe_ffn and DeepSeek V3's router) score -inf."""
    n_expert = p.shape[0]
    for e in range(n_expert):
        sel[e] = p[e] + bias[e] if bias.shape[0] > 0 else p[e]
    n_groups = hp.n_expert_groups
    if n_groups > 1:
        per = n_expert // n_groups
        for g in range(n_groups):
            argsort_desc_into(sel[g * per:(g + 1) * per], order, stack)
            # ggml_sum_rows of the two: a ggml_float sum
            group[g] = np.float32(np.float64(sel[g * per + order[0]]) + sel[g * per + order[1]])
        argsort_desc_into(group[:n_groups], order, stack)
        for g in range(n_groups):
            kept = False
            for j in range(hp.n_group_used):
                kept = kept or order[j] == g
            if not kept:
                for e in range(g * per, (g + 1) * per):
                    sel[e] = -np.inf
    argsort_desc_into(sel, order, stack)


@njit(nogil=True)
def _by_expert(chosen, pairs, start):
    """The (token, choice) pairs t * n_used + j grouped by expert into `pairs`:
    pairs[start[e]:start[e + 1]] are expert e's, in token order."""
    flat = chosen.reshape(-1)
    start[:] = 0
    for e in flat:
        start[e + 1] += 1
    for e in range(1, start.shape[0]):
        start[e] += start[e - 1]
    for i in range(flat.shape[0]):  # start[e] is expert e's next free place ...
        pairs[start[flat[i]]] = i
        start[flat[i]] += 1
    for e in range(start.shape[0] - 1, 0, -1):  # ... and ends as expert e + 1's first: shift back
        start[e] = start[e - 1]
    start[0] = 0


@njit(nogil=True)
def _expert(e, expert, n_expert):
    """Expert `expert`'s rows of an expert tensor's entry e (whole row groups: weights.py checks)."""
    nbytes = e.nbytes // n_expert
    return MatrixEntry(e.qtype, e.rows // n_expert, e.cols, e.offset + expert * nbytes, nbytes, e.row_group)


@njit(nogil=True, cache=True)
def _gated(lm, il, gate_slot, up_slot, width, act, wbuf, x, g, u, worker, n_workers, ks):
    """This worker's rows of a gated FFN's act(x @ gate.T) * (x @ up.T) into g [n, width]
    (u: up's); gate and up are cut alike, so that each worker multiplies its own rows of both."""
    r0, r1 = part(width, max(lm.row_group[il, gate_slot], lm.row_group[il, up_slot]), worker, n_workers)
    _matmul(_entry(lm, (il, gate_slot)), wbuf, x, g, r0, r1, ks)
    _matmul(_entry(lm, (il, up_slot)), wbuf, x, u, r0, r1, ks)
    gf = g.reshape(-1)
    uf = u.reshape(-1)
    for t in range(x.shape[0]):
        if act == ACT_SILU:
            silu_mul(gf, uf, t * width + r0, t * width + r1)
        else:
            for i in range(r0, r1):
                g[t, i] = _gelu_tanh(g[t, i]) * u[t, i]


@njit(nogil=True)
def _experts(worker, n_workers, bar, hp, lm, lv, vecs, il, wbuf, xn, s, routing, ks):
    """Layer il's mixture-of-experts FFN of xn into s.tmp, the shared experts' output
    added where the layer has them; returns the columns of tmp this worker wrote.

    The workers share the router's rows, then each routes every token alike. Each
    expert any token chose runs once for the batch on the tokens routed to it (as
    ggml's mul_mat_id), and every worker computes its share of that expert's gate/up
    rows and then of its down rows, as of a dense FFN's: whatever the routing, a
    worker reads only its own rows of the chosen experts. The shared experts are a
    dense FFN; their down rows are cut as the routed experts', so that each worker adds
    its own columns of both."""
    n, d, k = xn.shape[0], hp.n_embd, hp.n_expert_used
    router = s.router
    e = _entry(lm, (il, LayerMatrix.ROUTER))
    r0, r1 = _share(e, worker, n_workers)
    _matmul(e, wbuf, xn, router, r0, r1, ks)
    shared = lm.nbytes[il, LayerMatrix.GATE_SHEXP] > 0
    if shared:  # the routing does not wait for these
        _gated(lm, il, LayerMatrix.GATE_SHEXP, LayerMatrix.UP_SHEXP, s.sg.shape[1], ACT_SILU, wbuf, xn, s.sg, s.su,
               worker, n_workers, ks)
    barrier_wait(bar, n_workers)
    # This worker's working arrays (views taken once a layer).
    chosen, weights, order, start = s.chosen[worker], s.weights[worker], s.order[worker], s.start[worker]
    xe, ye, y = s.xe[worker], s.ye[worker], s.y[worker]
    _route(router, hp, _vec(vecs, lv, (il, LayerVector.EXP_PROBS_B)), routing, il, chosen, weights,
           s.probs[worker], s.select[worker], s.group[worker], order, s.stack[worker])
    pairs = order
    _by_expert(chosen, pairs, start)
    gate, up = _entry(lm, (il, LayerMatrix.GATE_EXPS)), _entry(lm, (il, LayerMatrix.UP_EXPS))
    f0, f1 = part(hp.n_ff_exp, max(gate.row_group, up.row_group), worker, n_workers)
    egf, euf = s.eg.reshape(-1), s.eu.reshape(-1)
    for ex in range(hp.n_expert):
        a, b = start[ex], start[ex + 1]
        if a == b:
            continue
        for i in range(a, b):
            xe[i - a] = xn[pairs[i] // k]
        _matmul(_expert(gate, ex, hp.n_expert), wbuf, xe[:b - a], s.eg[a:b], f0, f1, ks)
        _matmul(_expert(up, ex, hp.n_expert), wbuf, xe[:b - a], s.eu[a:b], f0, f1, ks)
        for i in range(a, b):
            silu_mul(egf, euf, i * hp.n_ff_exp + f0, i * hp.n_ff_exp + f1)
    barrier_wait(bar, n_workers)
    down = _entry(lm, (il, LayerMatrix.DOWN_EXPS))
    d0, d1 = part(d, max(down.row_group, lm.row_group[il, LayerMatrix.DOWN_SHEXP]), worker, n_workers)
    for ex in range(hp.n_expert):
        a, b = start[ex], start[ex + 1]
        if a == b:
            continue
        _matmul(_expert(down, ex, hp.n_expert), wbuf, s.eg[a:b], ye[:b - a], d0, d1, ks)
        for i in range(a, b):
            y[pairs[i], d0:d1] = ye[i - a, d0:d1]
    if shared:
        _matmul(_entry(lm, (il, LayerMatrix.DOWN_SHEXP)), wbuf, s.sg, s.sh, d0, d1, ks)
    # Weighted, then summed in each token's order of choice, as build_moe_ffn adds them;
    # then the shared experts' (ggml_add(moe_out, shexp_out)).
    for t in range(n):
        for c in range(d0, d1):
            acc = weights[t, 0] * y[t * k, c]
            for j in range(1, k):
                acc += weights[t, j] * y[t * k + j, c]
            if shared:
                acc += s.sh[t, c]
            s.tmp[t, c] = acc
    return d0, d1


# Compiled only into the pass of a model that takes them (engine/paths.py).
_mla_step = step_if("mla", _mla)
_experts_step = step_if("moe", _experts, (0, 0))


@njit(nogil=True, cache=True)
def forward(worker, n_workers, bar, hparams, tables, memory, batch, logits, activations, ks, paths):
    """One worker's part of running token t at position positions[t] of cache slot slots[t].

    The records come as plain() tuples: hparams an HParams, tables the WeightTables,
    memory this worker's WorkerMemory, batch the Batch, activations the Scratch sized
    for the batch. Every worker of the group calls this at once with the same batch and
    activations and its own memory; each computes its share of every matrix's rows and
    of the attention heads, writes its KV heads of every token, and they meet at `bar`
    where a step needs everyone's output. A token may attend to tokens before it in the
    same call (a prompt) or to earlier calls (its slot's cache). logits[i] gets token
    out_rows[i] (its final hidden state with batch.hidden). ks (kernels.kernel_set of the
    model's types) and paths (engine.paths.Paths.of its hparams) make the compiled pass
    hold only the kernels and the steps the model uses.
    """
    hp = HParams(*hparams)
    w = _weight_tables(tables)
    mem = WorkerMemory(*memory)
    wbuf, kc, vc, kv_heads = mem.wbuf, mem.k, mem.v, mem.kv_heads
    b = Batch(*batch)
    tokens, slots, positions, out_rows = b.tokens, b.slots, b.positions, b.out_rows
    s = Scratch(*activations)
    x, q, k, v, att, tmp, g, u = s.x, s.q, s.k, s.v, s.att, s.tmp, s.g, s.u
    lm, lv, vecs = w.layer, w.layer_vec, w.vecs
    n = tokens.shape[0]
    d = hp.n_embd
    hd = hp.head_dim
    eps = np.float32(hp.rms_eps)
    if worker == 0 and b.states.shape[0] > 0:
        _copy_rows(x, b.states, np.arange(n))
    elif worker == 0:
        e = _entry(w.model, ModelMatrix.TOKEN_EMBD)
        get_rows_in(ks, e.qtype, wbuf[e.offset:e.offset + e.nbytes], e.rows, e.cols, tokens, x)
        if hp.embd_scale != 1.0:
            x *= np.float32(hp.embd_scale)
    xn = np.empty((n, d), np.float32)
    head = np.empty(hd, np.float32)
    cos_g, sin_g = _rope_tables(positions, hp.n_rot, hp.rope_base, hp.rope_freq_scale, hp)
    cos_l, sin_l = _rope_tables(positions, hp.n_rot, hp.rope_base_local, 1.0, hp)  # llama.cpp: unscaled
    qh0, qh1 = part(hp.n_head, 1, worker, n_workers)
    barrier_wait(bar, n_workers)

    for il in range(hp.n_layer):
        local = _sliding_window_layer(hp, il)
        cos, sin = (cos_l, sin_l) if local else (cos_g, sin_g)
        _rmsnorm(x, _vec(vecs, lv, (il, LayerVector.ATTN_NORM)), eps, xn)
        if hp.kv_lora_rank > 0:
            _mla_step(paths, (worker, n_workers, bar, hp, w, il, wbuf, xn, s, kc, vc, kv_heads, slots, positions,
                              cos, sin, qh0, qh1, ks))
        else:
            for m, bias, out in ((LayerMatrix.Q, LayerVector.Q_BIAS, q), (LayerMatrix.K, LayerVector.K_BIAS, k),
                                 (LayerMatrix.V, LayerVector.V_BIAS, v)):
                e = _entry(lm, (il, m))
                r0, r1 = _share(e, worker, n_workers)
                _matmul(e, wbuf, xn, out, r0, r1, ks)
                _add_bias(out, _vec(vecs, lv, (il, bias)), r0, r1)
            barrier_wait(bar, n_workers)
            # Each worker normalises and rotates its KV heads on a private copy (a head
            # kept on several nodes is computed on each) and caches them on its node ...
            # Elements are copied by index: a view of an array every worker shares (k, v, q)
            # costs a reference count the workers contend for.
            k_norm = _vec(vecs, lv, (il, LayerVector.K_NORM))
            q_norm = _vec(vecs, lv, (il, LayerVector.Q_NORM))
            for t in range(n):
                for h in kv_heads:
                    for i in range(hd):
                        head[i] = k[t, h * hd + i]
                    if k_norm.shape[0] > 0:
                        _head_rmsnorm(head, k_norm, eps)
                    _rope_head(head, hp.n_rot, hp.rope_neox, cos, sin, t)
                    kv_put(kc[slots[t], il, h, positions[t]], head)
                    for i in range(hd):
                        head[i] = v[t, h * hd + i]
                    kv_put(vc[slots[t], il, h, positions[t]], head)
                for h in range(qh0, qh1):
                    for i in range(hd):
                        head[i] = q[t, h * hd + i]
                    if q_norm.shape[0] > 0:
                        _head_rmsnorm(head, q_norm, eps)
                    _rope_head(head, hp.n_rot, hp.rope_neox, cos, sin, t)
                    for i in range(hd):
                        q[t, h * hd + i] = head[i]
            barrier_wait(bar, n_workers)
            # ... then every query head attends over its slot's complete cache.
            _attention(q, kc, vc, slots, positions, il, hp, hp.sliding_window if local else 0, att, qh0, qh1)
        barrier_wait(bar, n_workers)
        e = _entry(lm, (il, LayerMatrix.O))
        r0, r1 = _share(e, worker, n_workers)
        _matmul(e, wbuf, att, tmp, r0, r1, ks)
        post_norm = _vec(vecs, lv, (il, LayerVector.POST_ATTN_NORM))
        if post_norm.shape[0] > 0:
            barrier_wait(bar, n_workers)  # the post-norm needs whole rows of tmp
        _add_residual(x, tmp, r0, r1, post_norm, eps)
        barrier_wait(bar, n_workers)

        _rmsnorm(x, _vec(vecs, lv, (il, LayerVector.FFN_NORM)), eps, xn)
        if lm.nbytes[il, LayerMatrix.ROUTER] > 0:
            r0, r1 = _experts_step(paths, (worker, n_workers, bar, hp, lm, lv, vecs, il, wbuf, xn, s, b.routing, ks))
        else:
            _gated(lm, il, LayerMatrix.GATE, LayerMatrix.UP, hp.n_ff, hp.act, wbuf, xn, g, u, worker, n_workers, ks)
            barrier_wait(bar, n_workers)
            e = _entry(lm, (il, LayerMatrix.DOWN))
            r0, r1 = _share(e, worker, n_workers)
            _matmul(e, wbuf, g, tmp, r0, r1, ks)
        post_norm = _vec(vecs, lv, (il, LayerVector.POST_FFN_NORM))
        if post_norm.shape[0] > 0:
            barrier_wait(bar, n_workers)
        _add_residual(x, tmp, r0, r1, post_norm, eps)
        barrier_wait(bar, n_workers)

    m = out_rows.shape[0]
    if b.residual:
        if worker == 0:
            _copy_rows(logits, x, out_rows)
        return
    xo = np.empty((m, d), np.float32)
    _rmsnorm(x[out_rows], _vec(vecs, w.model_vec, ModelVector.OUTPUT_NORM), eps, xo)
    if b.hidden:  # logits is [m, n_embd]: the states themselves
        if worker == 0:
            _copy_rows(logits, xo, np.arange(m))
        return
    e = _entry(w.model, ModelMatrix.OUTPUT)
    r0, r1 = _share(e, worker, n_workers)
    _matmul(e, wbuf, xo, logits, r0, r1, ks)
    if hp.final_softcap > 0.0:
        c = np.float32(hp.final_softcap)
        for t in range(m):
            for i in range(r0, r1):
                logits[t, i] = c * np.float32(math.tanh(logits[t, i] / c))


def kv_writers(n_head: int, n_head_kv: int, homes: list[object]) -> list[np.ndarray]:
    """The KV heads each worker writes: on each home (the node whose KV arrays the
    worker uses), every KV head its workers' query heads read, written by the first of
    them (forward.py splits query heads with part(n_head, 1, w, n_workers))."""
    group = n_head // n_head_kv
    written: dict[object, set[int]] = {}
    out = []
    for w, home in enumerate(homes):
        q0, q1 = split.part(n_head, 1, w, len(homes))
        done = written.setdefault(home, set())
        mine = sorted({h // group for h in range(q0, q1)} - done)
        done.update(mine)
        out.append(np.array(mine, np.int64))
    return out
