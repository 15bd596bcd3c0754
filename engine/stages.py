"""How a model's layers are cut into pipeline stages (cluster/): contiguous ranges
holding about the same bytes, counting what each stage holds besides its layers (the
first the token embeddings, the last the output norm and projection) and each layer's
KV cache, so that the largest stage, which sets the machines' size, is as small as it can be."""

from __future__ import annotations

import itertools

from numallm.engine.arch.spec import ArchSpec
from numallm.engine.gguf_file import GGUFFile
from numallm.engine.weights import check_model
from numallm.errors import BadInputError


def stage_bytes(gf: GGUFFile, spec: ArchSpec, kv_bytes_per_layer: int = 0) -> tuple[list[int], int, int]:
    """(bytes of each layer with its KV cache, bytes only the first stage holds, bytes
    only the last holds)."""
    layout = check_model(gf, spec)
    layers = [kv_bytes_per_layer] * spec.hparams.n_layer
    for (il, _), t in itertools.chain(layout.matrices, layout.vectors):
        layers[il] += t.nbytes
    assert layout.embd is not None and layout.out is not None and layout.onorm is not None  # the whole model
    return layers, layout.embd.nbytes, layout.out.nbytes + layout.onorm.nbytes


def split_layers(layers: list[int], first: int, last: int, n_stages: int) -> list[tuple[int, int]]:
    """The ranges [a, b) of n_stages contiguous stages, each at least one layer, whose
    largest total (layers, plus `first` bytes on the first stage and `last` on the last)
    is the smallest possible; ties go to the earliest cuts."""
    n = len(layers)
    if not 1 <= n_stages <= n:
        raise BadInputError(f"--pipeline {n_stages}: the model has {n} layers; use 1 to {n} stages")
    prefix = list(itertools.accumulate(layers, initial=0))

    def size(k: int, a: int, b: int) -> int:  # stage k holding layers [a, b)
        return prefix[b] - prefix[a] + (first if k == 0 else 0) + (last if k == n_stages - 1 else 0)

    # best[k][b]: the smallest largest stage when stages 0..k hold layers [0, b); cut: where stage k starts
    best = [[size(0, 0, b) if b else -1 for b in range(n + 1)]]
    cuts: list[list[int]] = [[0] * (n + 1)]
    for k in range(1, n_stages):
        row, cut = [-1] * (n + 1), [0] * (n + 1)
        for b in range(k + 1, n + 1):
            row[b], cut[b] = min((max(best[k - 1][a], size(k, a, b)), a) for a in range(k, b))
        best.append(row)
        cuts.append(cut)
    bounds, b = [], n
    for k in range(n_stages - 1, -1, -1):
        a = cuts[k][b]
        bounds.append((a, b))
        b = a
    return bounds[::-1]
