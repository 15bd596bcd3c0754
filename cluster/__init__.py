"""Pipeline-parallel serving across machines on Ray: `numallm serve --pipeline N`.

Each of N stages (cluster/stage.py, one Ray actor each: one per Ray node when the
cluster has N, all on this machine otherwise) holds a contiguous range of the model's
layers, cut by bytes (engine/stages.py), and places and runs it as an Engine does. The
driver (cluster/pipeline.py) tokenizes, batches and samples as a one-machine Engine
does, and sends each forward call's hidden states from stage to stage over a Ray
Compiled Graph. Ray is the optional extra numallm[cluster]; nothing else imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from numallm.errors import BadInputError

if TYPE_CHECKING:
    from numallm.cluster.pipeline import PipelineEngine


def pipeline_engine(n_stages: int, **engine_kwargs: Any) -> PipelineEngine:
    """A PipelineEngine of n_stages stages with the Engine's keyword arguments."""
    try:
        from numallm.cluster.pipeline import PipelineEngine
    except ImportError as e:
        if e.name is None or not e.name.startswith("ray"):
            raise
        raise BadInputError("--pipeline needs Ray: pip install 'numallm[cluster]' "
                            "(on every machine of the cluster)") from None
    return PipelineEngine(n_stages, **engine_kwargs)
