"""What a request gets when the server is overloaded: a 503 with Retry-After when
--max-queue requests already wait, a 504 once it runs past --timeout. Both counted."""

from __future__ import annotations

import time

from numallm.serve.errors import ApiError
from numallm.serve.metrics import Metrics

RETRY_AFTER_S = 1  # what a 503 for a full queue suggests: a slot frees every few hundred tokens


def queue_full(metrics: Metrics, why: str) -> ApiError:
    metrics.queue_full.inc()
    return ApiError(503, f"the server is busy: {why}; retry later", code="queue_full",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


class Deadline:
    """--timeout seconds from a request's arrival: what is left, and the error once past."""

    def __init__(self, metrics: Metrics, timeout_s: float, arrived: float) -> None:
        self._metrics, self._timeout = metrics, timeout_s
        self._at = arrived + timeout_s

    def left(self) -> float:
        return max(0.0, self._at - time.perf_counter())

    def passed(self) -> ApiError:
        self._metrics.timeouts.inc()
        return ApiError(504, f"the request ran past the server's --timeout of {self._timeout:g} s; "
                        "ask for less or retry when the server is less busy", code="timeout")
