"""The routed mixture-of-experts FFN of the DeepSeek family (deepseek2, glm4moe), as
llama.cpp's build_moe_ffn takes it from the file: the keys and tensors both
architectures share. What each defaults differently (the gating function) is the
architecture module's.

Leading dense layers, then experts chosen by softmax or sigmoid probabilities, the
selection biased by exp_probs_b where the file has it, within the best expert groups
where it has groups; the chosen probabilities renormalised and scaled as the file says;
plus shared experts every token runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import MODEL_TENSOR, Keys
from numallm.engine.arch.slots import LayerMatrix, LayerVector
from numallm.engine.arch.spec import GATING_SIGMOID, MAX_EXPERTS, MAX_FF, MAX_LAYERS, Key

ROUTED_EXPERT_KEYS = (
    Key(Keys.LLM.EXPERT_COUNT, int, 1, MAX_EXPERTS, "n_expert", required=True),
    Key(Keys.LLM.EXPERT_USED_COUNT, int, 1, MAX_EXPERTS, "n_expert_used", required=True),
    Key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, int, 1, MAX_FF, "n_ff_exp", required=True),
    Key(Keys.LLM.EXPERT_SHARED_COUNT, int, 0, MAX_EXPERTS, "n_expert_shared", required=True),
    Key(Keys.LLM.LEADING_DENSE_BLOCK_COUNT, int, 0, MAX_LAYERS, "n_layer_dense_lead", 0),
    Key(Keys.LLM.EXPERT_GATING_FUNC, int, 0, GATING_SIGMOID, "expert_gating"),  # none or 0: see gating()
    Key(Keys.LLM.EXPERT_WEIGHTS_NORM, bool, 0, 1, "expert_weights_norm", False),
    # 0.0 is llama.cpp's "not set" (build_moe_ffn scales by neither 0 nor 1), as the default
    Key(Keys.LLM.EXPERT_WEIGHTS_SCALE, float, 0.0, 1e6, "expert_weights_scale", 0.0, unset=0.0),
    Key(Keys.LLM.EXPERT_GROUP_COUNT, int, 0, MAX_EXPERTS, "n_expert_groups", 0),
    Key(Keys.LLM.EXPERT_GROUP_USED_COUNT, int, 0, MAX_EXPERTS, "n_group_used", 0),
    Key(Keys.LLM.NEXTN_PREDICT_LAYERS, int, 0, MAX_LAYERS, "n_layer_nextn", 0),
)

SHARED_EXPERT_MATRICES: Mapping[LayerMatrix, MODEL_TENSOR] = {
    LayerMatrix.GATE_SHEXP: MODEL_TENSOR.FFN_GATE_SHEXP, LayerMatrix.UP_SHEXP: MODEL_TENSOR.FFN_UP_SHEXP,
    LayerMatrix.DOWN_SHEXP: MODEL_TENSOR.FFN_DOWN_SHEXP,
}
EXP_PROBS_B: Mapping[LayerVector, MODEL_TENSOR] = {LayerVector.EXP_PROBS_B: MODEL_TENSOR.FFN_EXP_PROBS_B}


def gating(hp: Mapping[str, Any], default: int) -> dict[str, Any]:
    """expert_gating as llama.cpp reads it: `default` where the file has none (or 0, "none")."""
    return {"expert_gating": hp.get("expert_gating") or default}
