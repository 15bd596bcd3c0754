"""A mixture-of-experts file that cannot be run is refused before any weight is read:
one line naming the file and the key or tensor, exit status 2 on the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from synthetic import write_tiny_llama
from test_cli import numallm, one_error_line


def _drop(name: str) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda tensors: tensors.pop(name)


def _keep_experts(name: str, n: int) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[name] = tensors[name][:n]
    return edit


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "no expert used": (dict(n_expert_used=0), "'llama.expert_used_count' is 0, expected 1..4"),
    "more used than there are": (dict(n_expert_used=5), "'llama.expert_used_count' is 5, expected 1..4"),
    "missing expert tensor": (dict(edit=_drop("blk.1.ffn_up_exps.weight")),
                              "required tensor 'blk.1.ffn_up_exps.weight' is missing"),
    "missing router": (dict(edit=_drop("blk.0.ffn_gate_inp.weight")),
                       "required tensor 'blk.0.ffn_gate_inp.weight' is missing"),
    "an expert short": (dict(edit=_keep_experts("blk.0.ffn_down_exps.weight", 3)),
                        "tensor 'blk.0.ffn_down_exps.weight' has shape [128, 64, 3], expected [128, 64, 4]"),
    "router of the wrong size": (dict(edit=_keep_experts("blk.1.ffn_gate_inp.weight", 3)),
                                 "tensor 'blk.1.ffn_gate_inp.weight' has shape [64, 3], expected [64, 4]"),
    "experts not whole tiles": (dict(n_ff=40, type_overrides={"ffn_down_exps": T.F32}),
                                "tensor 'blk.0.ffn_gate_exps.weight' has 40 rows per expert, not a multiple of the 16-row tiles"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_expert_file_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    changes, expect = CASES[case]
    path = write_tiny_llama(tmp_path / "moe.gguf", **{"n_expert": 4, "n_expert_used": 2, **changes})
    done = numallm("generate", "-m", str(path), "-n", "1", "hello")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert str(path) in line and expect in line, line
