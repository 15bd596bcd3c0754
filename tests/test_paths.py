"""engine/paths.py: a step the model's Paths lacks is never typed, one it has is called."""

from numba import njit

from numallm.engine.paths import Paths, step_if


@njit
def _double(x):  # type: ignore[no-untyped-def]
    return 2 * x


@njit
def _untypable(x):  # type: ignore[no-untyped-def]
    return x.no_such_attribute


_double_step = step_if("moe", _double, 0)
_untypable_step = step_if("mla", _untypable, 0)


@njit
def _run(paths, x):  # type: ignore[no-untyped-def]
    return _double_step(paths, (x,)) + _untypable_step(paths, (x,))


def test_a_step_runs_for_a_model_with_it_and_is_not_compiled_without() -> None:
    assert _run(Paths(moe=True, mla=False), 21) == 42
    assert _run(Paths(moe=False, mla=False), 21) == 0
    assert len(_run.signatures) == 2  # one compiled pass per Paths


def test_paths_of_hparams() -> None:
    class HP:
        n_expert, kv_lora_rank = 8, 0
    assert Paths.of(HP()) == Paths(moe=True, mla=False)  # type: ignore[arg-type]
