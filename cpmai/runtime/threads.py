"""How many OpenMP/BLAS threads a serving process's model may use.

A model's native libraries (OpenMP in scikit-learn's HistGradientBoosting, LightGBM, XGBoost;
OpenBLAS or MKL under numpy) start one thread per core by default. A server that runs several
replicas, or serves small requests, then has every call fan out across all cores and wait on
the others: the machine is oversubscribed and latency jumps. cpmai limits each server process
to its replica's CPU share (`environments.ENV.resources.cpu`, rounded up), or to
`serving.threads`.

Two mechanisms, because each covers what the other cannot: the environment variables the
libraries read when they load (OpenMP's limit is also each new thread's default, so it reaches
the model's executor thread), and threadpoolctl for libraries already loaded.
"""

from __future__ import annotations

import math
import os

VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def share(cpu: float | None, workers: int = 1) -> int:
    """Threads for one process: its CPU share rounded up (at least 1); with no share given,
    the machine's cores divided among the workers."""
    if cpu is not None:
        return max(1, math.ceil(cpu))
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def limit(threads: int) -> None:
    """Limit this process (and threads it starts later) to `threads` native threads."""
    from threadpoolctl import threadpool_limits

    os.environ.update(dict.fromkeys(VARIABLES, str(threads)))
    threadpool_limits(limits=threads)
