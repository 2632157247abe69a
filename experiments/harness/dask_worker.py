"""The worker side of a sweep on Dask distributed (see :mod:`~experiments.harness.executors`): the task that runs
cells, the plugin that hands a sweep's ``measure`` to every worker once, what a worker reports about itself,
and the nanny preload that makes a ``dask worker`` fit for timing.

Start the workers of a cluster that times cells with this module as the nanny's preload::

    dask worker tcp://SCHEDULER:8786 --nworkers 1 --nthreads 1 --resources timer=1 \\
        --preload-nanny experiments.harness.dask_worker

Dask's nanny otherwise starts its worker processes *daemonic* (so they cannot start the fresh processes that
``process`` isolation times in) and with ``MALLOC_TRIM_THRESHOLD_``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``
and ``OPENBLAS_NUM_THREADS`` set (``distributed.nanny.pre-spawn-environ``): the first fixes glibc's mmap
threshold (its dynamic adjustment is off once any threshold is set), the others make NumPy's, SciPy's and
torch's BLAS single-threaded: times that a user's program would not see.
"""

from __future__ import annotations

import os
import socket
import time

from distributed import WorkerPlugin, get_worker

from .cells import run_cell

#: Variables Dask's nanny sets in its worker processes by default, which change what a timing measures.
NANNY_TIMING_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: The Dask configuration under which a nanny starts worker processes fit for timing.
TIMING_WORKER_CONFIG = {
    "distributed.worker.daemon": False,
    **{f"distributed.nanny.pre-spawn-environ.{name}": None for name in NANNY_TIMING_VARIABLES},
}

#: (On a worker.) The ``measure`` of each sweep this worker serves, by sweep id (:class:`SweepMeasure`).
_MEASURES: dict = {}


class SweepMeasure(WorkerPlugin):
    """Hands a sweep's ``measure`` to each worker once, rather than with every task: registered by the client
    for the sweep, it is set up on every worker of the cluster, those that join later and restarted ones
    included, and removed when the sweep ends."""

    idempotent = False

    def __init__(self, sweep_id: str, measure):
        self.sweep_id, self.measure = sweep_id, measure

    def setup(self, worker):
        _MEASURES[self.sweep_id] = self.measure

    def teardown(self, worker):
        _MEASURES.pop(self.sweep_id, None)


def run_cells_task(sweep_id: str, cells: list) -> list[dict]:
    """(The Dask task of one cell, or of the cells of one case in a timed sweep, one after another.) The
    :func:`~.cells.run_cell` row of each cell with the sweep's ``measure``, which also says where and when it
    ran: ``host`` (the host name), ``worker`` (the worker's address), ``started_at`` and ``finished_at`` (Unix
    time, seconds)."""
    if sweep_id not in _MEASURES:
        raise RuntimeError(
            f"this worker has no measure for sweep {sweep_id}: its plugin failed to set up (do "
            f"`testbed` and `experiments` import here?)"
        )
    worker, host, measure = get_worker(), socket.gethostname(), _MEASURES[sweep_id]
    rows = []
    for cell in cells:
        started = time.time()
        row = run_cell(cell, measure)
        row.update(host=host, worker=worker.address, started_at=started, finished_at=time.time())
        rows.append(row)
    return rows


def describe() -> dict:
    """(On each worker, through ``Client.run``; and in the client.) This process and its host: process id,
    whether it is daemonic (then it cannot start the processes that ``process`` isolation times in), and the
    machine's description under meta.json's keys (:func:`~.metadata.machine_meta`: CPU, platform, versions and
    git state, cores and threads, GPU, thread pools, allocator/threading environment, load, CPU governor).
    Nothing is imported for it."""
    import multiprocessing

    from .metadata import machine_meta

    return {"pid": os.getpid(), "daemon": multiprocessing.current_process().daemon, **machine_meta()}


def dask_setup(nanny) -> None:
    """(``--preload-nanny experiments.harness.dask_worker``.) Start this nanny's worker processes fit for
    timing: not daemonic, and without the variables of :data:`NANNY_TIMING_VARIABLES` that the nanny would set
    (those the nanny's own environment has are kept: they are the operator's choice)."""
    import dask

    if not hasattr(nanny, "pre_spawn_env"):
        raise RuntimeError(
            "experiments.harness.dask_worker configures the nanny before it starts its worker: "
            "pass it with --preload-nanny, not --preload"
        )
    dask.config.set({"distributed.worker.daemon": False})
    for name in NANNY_TIMING_VARIABLES:
        if name not in os.environ:
            nanny.pre_spawn_env.pop(name, None)
            nanny.env.pop(name, None)
