"""Pipeline-parallel serving across machines on Ray: `numallm serve --pipeline N`.

Each of N stages (cluster/stage.py, one Ray actor each: one per Ray node when the
cluster has N, all on this machine otherwise) holds a contiguous range of the model's
layers, cut by bytes (engine/stages.py), and places and runs it as an Engine does. The
driver (cluster/pipeline.py) tokenizes, batches and samples as a one-machine Engine
does, and each forward call's hidden states go from stage to stage through Ray's object
store. Ray is the optional extra numallm[cluster]; nothing else imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from numallm.errors import BadInputError

if TYPE_CHECKING:
    from numallm.engine.engine import Engine


def open_engine(pipeline: int = 1, **engine_kwargs: Any) -> Engine:
    """Engine(**engine_kwargs), or with pipeline > 1 a PipelineEngine of that many stages
    (the Engine's API); the CLI, the server and bench load models through this."""
    if pipeline == 1:
        from numallm.engine import engine  # Numba and the kernels: only once a model loads

        return engine.Engine(**engine_kwargs)
    try:
        from numallm.cluster.pipeline import PipelineEngine
    except ImportError as e:
        if e.name is None or not e.name.startswith("ray"):
            raise
        raise BadInputError("--pipeline needs Ray: pip install 'numallm[cluster]' "
                            "(on every machine of the cluster)") from None
    return PipelineEngine(pipeline, **engine_kwargs)
