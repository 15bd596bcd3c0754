"""The memory roofline of token generation: the t/s ceiling a read bandwidth implies.

Generating one token reads every weight the forward pass uses once (the output
projection included; of a mixture of experts, only the experts it is routed to) and,
in attention, the KV cache up to that position; nothing else of size. So at a read
bandwidth B (bytes/s) a decode at position p takes at least
(weight bytes per token + KV bytes read at p) / B, and tg N from an empty context
(positions 0..N-1, as llama-bench runs it) at least the sum of that over those N.

Byte counts come from the GGUF file, not from our in-memory layout, so the ceiling is
the same for every engine reading that file.
"""

from __future__ import annotations

from numallm.engine.arch.slots import EXPERTS
from numallm.engine.arch.spec import ArchSpec, HParams, sliding_window_layer
from numallm.engine.gguf_file import GGUFFile
from numallm.engine.kv_cache import kv_widths


def weight_bytes_per_token(gf: GGUFFile, spec: ArchSpec) -> int:
    """Bytes of the model one decode step reads: each layer's matrices and vectors the
    forward pass uses (of a mixture of experts' expert tensors used/count, the experts
    it routes to; the router, shared experts and attention whole), the output norm and
    projection, and one row of the token embedding table, unless it doubles as the output
    projection (tied embeddings), in which case all of it. Tensors the pass never reads
    (glm4moe's NextN layers) count nothing."""
    hp = spec.hparams

    def nbytes(name: str) -> int:
        return gf.tensors[name].nbytes if name in gf.tensors else 0  # an optional vector may be absent

    total = 0
    for il in range(hp.n_layer):
        for slot, name in spec.matrix_names(il).items():
            total += nbytes(name) * hp.n_expert_used // hp.n_expert if slot in EXPERTS else nbytes(name)
        vectors = {**spec.vector_names(il), **spec.optional_vector_names(il)}
        total += sum(nbytes(name) for name in vectors.values())
    embd = gf.tensors[spec.token_embd]
    output = embd.nbytes if spec.output not in gf.tensors else nbytes(spec.output)
    return total + nbytes(spec.output_norm) + output + embd.row_bytes


def kv_bytes_read(hp: HParams, kv_itemsize: int, pos: int) -> int:
    """KV cache bytes attention reads for the token at position `pos` (0-based), all
    layers, K and V: positions 0..pos, or the last sliding_window of them on
    sliding-window layers."""
    per_position = hp.n_head_kv * sum(kv_widths(hp)) * kv_itemsize  # a layer's: K and V (or latent and rope)
    total = 0
    for il in range(hp.n_layer):
        local = sliding_window_layer(hp, il) and hp.sliding_window > 0
        seen = min(pos + 1, hp.sliding_window) if local else pos + 1
        total += seen * per_position
    return total


def tg_ceiling_ts(weight_bytes: int, hp: HParams, kv_itemsize: int, n_gen: int, gbps: float) -> float:
    """The most tokens/s a tg n_gen run (positions 0..n_gen-1) can reach at `gbps` GB/s."""
    total = sum(weight_bytes + kv_bytes_read(hp, kv_itemsize, p) for p in range(n_gen))
    return n_gen * gbps * 1e9 / total
