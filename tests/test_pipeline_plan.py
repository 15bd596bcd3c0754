"""What a pipeline is made of, without Ray: the layer ranges cut by bytes, the cores of a
machine that several stages share, a stage's part of the model, and stage Engines
chained by hand giving the whole model's logits bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from numallm.engine.arch.spec import sliding_window_layer
from numallm.engine.engine import Engine
from numallm.engine.model_load import open_model
from numallm.engine.stages import split_layers, stage_bytes
from numallm.errors import BadInputError, TopologyError
from numallm.numa.share import core_share
from numallm.numa.topology import detect
from synthetic_deepseek import write_tiny_glm4moe
from test_topology_synthetic import write_machine


def test_layers_are_cut_so_the_largest_stage_is_smallest() -> None:
    assert split_layers([10] * 30, 50, 50, 2) == [(0, 15), (15, 30)]
    # a large embedding table on the first stage leaves it fewer layers
    assert split_layers([10] * 30, 100, 20, 3) == [(0, 4), (4, 18), (18, 30)]
    assert split_layers([1, 1, 1], 0, 0, 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_layers([5, 1, 1, 1, 1, 1], 0, 0, 2) == [(0, 1), (1, 6)]
    assert split_layers([7], 3, 3, 1) == [(0, 1)]


@pytest.mark.parametrize("n", [0, 4])
def test_more_stages_than_layers_is_bad_input(n: int) -> None:
    with pytest.raises(BadInputError, match=f"--pipeline {n}: the model has 3 layers; use 1 to 3 stages"):
        split_layers([1, 1, 1], 0, 0, n)


def test_stages_sharing_a_machine_take_whole_nodes_of_its_cores(tmp_path: Path) -> None:
    topo = detect(str(write_machine(tmp_path, sockets=2, cores=4, threads=2, nodes=2)))
    node0, node1 = (topo.node(n).cpus for n in (0, 1))
    assert (core_share(topo, 0, 2), core_share(topo, 1, 2)) == (node0, node1)
    shares = [core_share(topo, i, 3) for i in range(3)]
    assert sorted(len(s) for s in shares) == [4, 6, 6]  # whole cores with their SMT siblings
    assert frozenset().union(*shares) == topo.cpus and sum(map(len, shares)) == len(topo.cpus)
    with pytest.raises(TopologyError, match="9 pipeline stages share a machine with 8 allowed cores"):
        core_share(topo, 0, 9)


def test_a_stage_spec_names_its_layers_from_the_models(tiny_llama: Path) -> None:
    spec = open_model(tiny_llama).spec
    first, last = spec.stage(0, 1), spec.stage(1, 2)
    assert (first.hparams.n_layer, first.embeds, first.outputs) == (1, True, False)
    assert (last.hparams.n_layer, last.hparams.layer0, last.embeds, last.outputs) == (1, 1, False, True)
    assert all(name.startswith("blk.1.") for name in last.matrix_names(0).values())
    gemma_like = last.hparams._replace(swa_period=2)  # layer 1 of the model is global: (1 + 1) % 2 == 0
    assert not sliding_window_layer(gemma_like, 0)
    layers, embd, out = stage_bytes(open_model(tiny_llama).gf, spec)
    assert len(layers) == 2 and embd > 0 and out > 0


@pytest.fixture(scope="module")
def glm_air(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """glm4moe with two leading dense layers of four: a stage's layers must know where they sit."""
    return write_tiny_glm4moe(tmp_path_factory.mktemp("glm") / "air.gguf", qk_norm=False, n_nextn=0, n_layer=4,
                              n_leading_dense=2, seed=3)


@pytest.mark.parametrize("model, cuts", [("tiny_llama", [(0, 1), (1, 2)]),
                                         ("glm_air", [(0, 1), (1, 3), (3, 4)])])
def test_stage_engines_chained_give_the_whole_models_logits_bit_for_bit(model: str, cuts: list[tuple[int, int]],
                                                                         request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model)
    ids = np.array([1, 7, 42, 9, 100], np.int32)
    z, pos = np.zeros(5, np.int32), np.arange(5, dtype=np.int32)
    with Engine(path, threads=1, ctx_size=64) as whole:
        expected = whole.eval_batch(ids, z, pos, pos)
        whole_bytes = whole.placed.weights.matrix_bytes
    stages = [Engine(path, threads=1, ctx_size=64, layers=cut) for cut in cuts]
    try:
        assert all(s.placed.weights.matrix_bytes < whole_bytes for s in stages)
        states = None
        for s in stages:
            states = s.eval_batch(ids, z, pos, pos, states=states)
        assert np.array_equal(states, expected)
        with pytest.raises(BadInputError, match="states"):
            stages[1].eval_batch(ids, z, pos, pos)  # a later stage needs the states
    finally:
        for s in stages:
            s.close()
