"""Where a sweep's cells run: here, one after another (:class:`LocalExecutor`, the default), or as the tasks of
a Dask distributed cluster (:class:`DaskExecutor`), on as many hosts as the cluster has.

Either way the process that runs the sweep (the *client*) is the only writer of the run directory: it appends
each finished cell's row to ``rows.jsonl`` as its result arrives, so a cell is on disk once, whatever happened
to the workers, and ``--resume`` skips it.

**On Dask** a cell is one task: ``run_cell`` on a worker, with the sweep's ``measure`` handed to each worker
once (a worker plugin) rather than pickled into every task. In a *timed* sweep (speed, scaling, interference)
a task is a case instead: the cells that differ only in the backend, timed back to back on one host in sweep
order, as the local executor times them, so a speedup (and the baseline's drift over a case) compares times
taken on one host. A row also has ``host``, ``worker`` and its ``started_at``/``finished_at`` (Unix time).
Resources (``dask worker --resources``) place the tasks:

- ``timer``: every task of a timed sweep needs ``timer=1``. A host must offer at most one timer slot in all
  (one worker process with ``--resources timer=1``, the others none): then two timing cells never run at once
  on a host. The sweep is refused before it starts if some host offers more (or none offers any, or a timer
  worker is daemonic and so cannot start the processes that ``process`` isolation times in), and the rows'
  time stamps are checked afterwards (:func:`timing_overlaps`; a warning and meta.json's ``timing_overlaps``
  if any overlapped, which only a timer worker joining during the sweep could cause). Untimed cells
  (correctness, ...) need nothing and run on every worker at once.
- ``gpu``: a task with a CUDA backend's cell needs ``gpu=1`` when some worker of the cluster offers it; in a
  cluster without one it runs on any worker, which records what it finds (``unavailable``, or the CUDA
  simulator where the workers run with ``NUMBA_ENABLE_CUDASIM=1``), as the local executor would.

Why resources rather than a per-host lock (``distributed.Lock`` named by host): a task waiting for a lock
holds its worker's thread, and a lock held by a killed worker is freed only when its lease times out; with
resources the scheduler never starts the second timing task, and a killed worker's task is rescheduled at
once. What a lock gives for free, that no configuration puts two timers on a host, is checked instead,
before the sweep (the resources) and after it (the time stamps).

**Failures.** A worker that dies (killed process, lost host) has its running task rescheduled on another
worker by Dask; a task whose worker died ``distributed.scheduler.allowed-failures`` + 1 times (default 4: a
cell that crashes its process) gives ``error`` rows that say so. A sweep whose cluster goes away (scheduler
lost, interrupted) stops with its finished rows on disk; ``--resume`` completes it.

**Before the sweep** the client compares its versions with every worker's: Dask's own check
(``Client.get_versions(check=True)``: Python, dask, distributed, cloudpickle, ...), then NumPy, SciPy, Numba,
llvmlite, numba-cuda, torch and the testbed (version and git commit); a difference is an error
(``allow_version_mismatch=True``, ``--allow-version-mismatch``, goes on and records it). Each host's machine
metadata (CPU, versions, threads, GPU, thread pools, allocator/threading environment, backend status) goes
into meta.json under ``hosts``, and each session's scheduler, workers and warnings under ``dask``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import sys
import types
import uuid
from pathlib import Path

from .storage import HarnessError, atomic_write_json

__all__ = [
    "DASK_EXTRA",
    "DaskUnavailable",
    "ClusterRefused",
    "LocalExecutor",
    "DaskExecutor",
    "require_dask",
    "local_cluster",
    "timing_overlaps",
    "compared_versions",
]

#: How to install what ``--executor dask`` needs.
DASK_EXTRA = "pip install 'convtranspose-testbed[dask]'"


class DaskUnavailable(HarnessError):
    """``--executor dask`` without Dask distributed installed."""


class ClusterRefused(HarnessError):
    """The cluster cannot run this sweep as promised (versions differ, two timers on a host, ...)."""


def require_dask():
    """Import ``distributed`` or raise :class:`DaskUnavailable` naming the extra that installs it."""
    try:
        import distributed
    except ImportError as exc:
        raise DaskUnavailable(
            f"--executor dask needs Dask distributed, which is not installed here ({exc}); "
            f"install it with: {DASK_EXTRA}"
        ) from None
    return distributed


class LocalExecutor:
    """Every cell in this process, one after another, in sweep order."""

    name = "local"

    def run(self, cells, measure, record, *, timed: bool, run_dir: Path, bar) -> None:
        from .cells import run_cell

        for cell in cells:
            bar.set_postfix_str(f"{cell.case} {cell.backend_name} {cell.problem.dtype}", refresh=False)
            record(run_cell(cell, measure))
            bar.update()


@contextlib.contextmanager
def local_cluster(n_workers: int = 2, *, gpu: bool | None = None):
    """A cluster of ``n_workers`` worker processes (one thread each) on 127.0.0.1, fit for timing, closed on
    leaving the block: worker 0 offers ``timer=1`` (and ``gpu=1`` where this process sees a CUDA GPU; ``gpu``
    overrides), the others nothing; no dashboard. Its workers are not daemonic and get this process's
    environment, without the variables Dask's nanny would add (:data:`~.dask_worker.NANNY_TIMING_VARIABLES`)."""
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    from .dask_worker import TIMING_WORKER_CONFIG

    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"n_workers must be an int >= 1, got {n_workers!r}")
    if gpu is None:
        from testbed.machine import gpu as gpu_info

        gpu = bool(gpu_info().get("gpu"))
    first = {"timer": 1, **({"gpu": 1} if gpu else {})}
    workers = {
        i: {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "host": "127.0.0.1",
                "silence_logs": logging.WARNING,
                "resources": first if i == 0 else {},
            },
        }
        for i in range(n_workers)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    # a nanny reads the configuration whenever it (re)starts its worker: set for the cluster's whole life
    with dask.config.set(TIMING_WORKER_CONFIG):
        cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING, name="testbed-sweep")
        try:
            yield cluster
        finally:
            # a worker process that has imported torch and numba may take more than the nanny's 4 s to exit
            # on a busy machine; it is killed then, harmlessly once the sweep is over: no warning for that
            nanny_log = logging.getLogger("distributed.nanny")
            level = nanny_log.level
            nanny_log.setLevel(logging.ERROR)
            try:
                cluster.close()
            finally:
                nanny_log.setLevel(level)


def timing_overlaps(rows) -> list[tuple[str, str, str]]:
    """``(host, cell_key, cell_key)`` for every two rows of one host whose ``started_at``–``finished_at`` spans
    overlap (rows without stamps are ignored)."""
    by_host: dict = {}
    for row in rows:
        if (
            row.get("host")
            and isinstance(row.get("started_at"), (int, float))
            and isinstance(row.get("finished_at"), (int, float))
        ):
            by_host.setdefault(row["host"], []).append(row)
    overlaps = []
    for host, host_rows in by_host.items():
        host_rows.sort(key=lambda r: r["started_at"])
        latest = None  # the row that ends last among those started so far
        for row in host_rows:
            if latest is not None and row["started_at"] < latest["finished_at"]:
                overlaps.append((host, latest["cell_key"], row["cell_key"]))
            if latest is None or row["finished_at"] > latest["finished_at"]:
                latest = row
    return overlaps


def compared_versions(description: dict) -> dict:
    """What must agree between the client and a worker (:func:`~.dask_worker.describe`): Python, the testbed
    (version and git commit) and the libraries of :data:`testbed.machine.LIBRARIES`."""
    from testbed.machine import LIBRARIES

    versions = description.get("versions", {})
    return {
        **{name: versions.get(name) for name in ("python", "testbed", *LIBRARIES)},
        "testbed commit": description.get("git", {}).get("commit"),
    }


class DaskExecutor:
    """The cells as tasks of a Dask distributed cluster: the one at ``scheduler`` (an address such as
    ``tcp://host:8786``), or, without one, a :func:`local_cluster` of ``n_workers`` processes that the
    sweep starts and closes. See the module's docstring for what is guaranteed."""

    name = "dask"

    def __init__(
        self,
        scheduler: str | None = None,
        n_workers: int = 2,
        *,
        allow_version_mismatch: bool = False,
        connect_timeout_s: float = 30.0,
    ):
        require_dask()
        self.scheduler, self.n_workers = scheduler, n_workers
        self.allow_version_mismatch, self.connect_timeout_s = allow_version_mismatch, connect_timeout_s

    @contextlib.contextmanager
    def client(self):
        """A connected ``distributed.Client``; the local cluster, if this started one, is closed afterwards."""
        from distributed import Client

        if self.scheduler is not None:
            try:
                client = Client(self.scheduler, timeout=self.connect_timeout_s, set_as_default=False)
            except OSError as exc:
                raise ClusterRefused(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
            with client:
                yield client
            return
        with local_cluster(self.n_workers) as cluster, Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(self.n_workers, timeout=120)
            yield client

    def run(self, cells, measure, record, *, timed: bool, run_dir: Path, bar) -> None:
        from distributed import as_completed

        from .dask_worker import SweepMeasure, run_cells_task

        with self.client() as client:
            if not client.scheduler_info()["workers"]:
                try:
                    client.wait_for_workers(1, timeout=self.connect_timeout_s)
                except TimeoutError:
                    raise ClusterRefused(
                        f"no worker joined the Dask scheduler at {self.scheduler} within {self.connect_timeout_s:g} s"
                    ) from None
            workers = self.preflight(client, timed, run_dir)
            sweep_id = f"testbed-sweep-{uuid.uuid4().hex[:12]}"
            name_main_module()
            try:
                client.register_plugin(SweepMeasure(sweep_id, measure), name=sweep_id)
            except Exception as exc:
                raise ClusterRefused(
                    f"the sweep's measure could not be handed to the workers ({type(exc).__name__}: "
                    f"{exc}): it must pickle (cloudpickle) and its modules import there"
                ) from exc
            pending: dict = {}
            rows = []
            try:
                for index, (group, resources) in enumerate(tasks(cells, timed, workers)):
                    future = client.submit(
                        run_cells_task,
                        sweep_id,
                        group,
                        key=f"{sweep_id}-{index}",
                        pure=False,
                        resources=resources or None,
                    )
                    pending[future] = group
                for future in as_completed(list(pending), loop=client.loop):
                    for row in finished_rows(future, pending.pop(future)):
                        record(row)
                        rows.append(row)
                        bar.set_postfix_str(
                            f"{row['case']} {row['backend']} {row['dtype']} @ {row.get('host') or '?'}", refresh=False
                        )
                        bar.update()
            except BaseException:
                client.cancel(list(pending), force=True)
                raise
            finally:
                with contextlib.suppress(Exception):
                    client.unregister_worker_plugin(sweep_id)
        if timed:
            self.check_overlaps(rows, run_dir)

    # ---- before and after the sweep ----------------------------------------------------------------------------

    def preflight(self, client, timed: bool, run_dir: Path) -> dict:
        """Check the versions and (for a timed sweep) the timer resources, record each host in meta.json, and
        return the scheduler's view of the workers."""
        from .dask_worker import describe

        try:
            client.get_versions(check=True)
        except ValueError as exc:
            raise ClusterRefused(f"the Dask client and cluster differ in packages Dask needs equal: {exc}") from None
        try:
            described = client.run(describe)
        except Exception as exc:
            raise ClusterRefused(
                f"a Dask worker could not describe itself ({type(exc).__name__}: {exc}); do "
                f"`testbed` and `experiments` import there? Start the workers from the repository "
                f"root or with it on PYTHONPATH"
            ) from exc
        workers = client.scheduler_info()["workers"]
        mine = describe()
        problems = []
        for address, description in sorted(described.items()):
            ours, theirs = compared_versions(mine), compared_versions(description)
            differing = [
                f"{name} {theirs.get(name)} (client {value})"
                for name, value in ours.items()
                if value != theirs.get(name)
            ]
            if differing:
                problems.append(f"worker {address} on {description['hostname']}: {', '.join(differing)}")
        if problems and not self.allow_version_mismatch:
            raise ClusterRefused(
                "versions differ between the client and workers, so the rows would not come "
                "from one code: " + "; ".join(problems) + ". Install the same versions (and "
                "commit) everywhere, or pass --allow-version-mismatch to go on and record it"
            )
        warnings_ = [f"version mismatch (allowed): {p}" for p in problems]
        elsewhere = sorted({d["hostname"] for d in described.values()} - {mine["hostname"]})
        if mine["git"].get("dirty") and elsewhere:
            warnings_.append(
                f"this checkout has uncommitted changes, which the workers on {', '.join(elsewhere)} "
                f"may lack (their commit is the same)"
            )
        if timed:
            warnings_ += self._check_timers(workers, described, mine)
        for text in warnings_:
            print(f"dask executor: warning: {text}", file=sys.stderr)
        record_hosts(run_dir, self.scheduler or "LocalCluster", workers, described, warnings_)
        return workers

    def _check_timers(self, workers: dict, described: dict, mine: dict) -> list[str]:
        slots: dict = {}
        for address, info in workers.items():
            timer = info.get("resources", {}).get("timer", 0)
            if timer:
                host = described.get(address, {}).get("hostname", info.get("host"))
                slots.setdefault(host, []).append((address, timer))
        if not slots:
            raise ClusterRefused(
                "no worker of the cluster offers the 'timer' resource, which every timing cell "
                "needs: start one worker process per host with --resources timer=1"
            )
        crowded = {host: found for host, found in slots.items() if sum(t for _, t in found) > 1}
        if crowded:
            raise ClusterRefused(
                "two timing cells could run at once on one host: "
                + "; ".join(
                    f"host {host} offers {sum(t for _, t in found):g} timer slots ("
                    + ", ".join(f"{a} timer={t:g}" for a, t in found)
                    + ")"
                    for host, found in crowded.items()
                )
                + ". Give exactly one worker process per host --resources timer=1"
            )
        daemonic = [a for found in slots.values() for a, _ in found if described.get(a, {}).get("daemon")]
        if daemonic:
            raise ClusterRefused(
                f"timer worker(s) {', '.join(daemonic)} run as daemonic processes, which cannot "
                f"start the processes that process isolation times in: start them with "
                f"--preload-nanny experiments.harness.dask_worker"
            )
        warnings_ = []
        for found in slots.values():
            for address, _ in found:
                theirs = described.get(address, {}).get("environment", {})
                ours = mine.get("environment", {})
                differing = sorted(name for name in set(theirs) | set(ours) if theirs.get(name) != ours.get(name))
                if differing:
                    warnings_.append(
                        f"timer worker {address} times with another allocator/threading environment "
                        f"than this client: "
                        + ", ".join(f"{n}={theirs.get(n)} (client {ours.get(n)})" for n in differing)
                    )
        return warnings_

    def check_overlaps(self, rows: list, run_dir: Path) -> None:
        overlaps = timing_overlaps(rows)
        if not overlaps:
            return
        print(
            f"dask executor: warning: {len(overlaps)} pair(s) of timing cells overlapped on one host (a worker "
            f"with the timer resource joined during the sweep?); see meta.json, timing_overlaps",
            file=sys.stderr,
        )
        update_meta(run_dir, lambda meta: meta.setdefault("timing_overlaps", []).extend(map(list, overlaps)))


def name_main_module() -> None:
    """Let the functions of a module run as ``python -m experiments.NAME`` pickle by reference, under that name.

    Run so, the module is ``__main__``, and cloudpickle copies its functions by value into the measure it sends
    to the workers; a copy of a module-level function that the worker then hands to a ``process``-isolation
    child (plain pickle, by reference) is "not the same object as ``__main__.<name>``" there. So the module is
    also registered under its own name (what ``runpy`` leaves out), and its functions and classes say they
    belong to it: the workers import them from ``experiments.NAME`` like any module's."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if not name or name == "__main__" or sys.modules.setdefault(name, main) is not main:
        return
    for value in list(vars(main).values()):
        if getattr(value, "__module__", None) == "__main__" and isinstance(value, type | types.FunctionType):
            value.__module__ = name


def tasks(cells, timed: bool, workers: dict) -> list[tuple[list, dict]]:
    """The sweep's tasks, ``(cells, resources)`` in sweep order: one per cell; in a timed sweep one per case
    (the cells that differ only in the backend, in sweep order), so that a case's backends are timed back to
    back on one host, as the local executor times them. A task needs ``timer=1`` in a timed sweep, and
    ``gpu=1`` if it has a CUDA backend's cell and some worker offers ``gpu``."""
    from testbed.registry import get_backend

    def is_cuda(cell) -> bool:
        try:
            return get_backend(cell.backend).device == "cuda"
        except Exception:
            return False

    gpu = any(info.get("resources", {}).get("gpu", 0) >= 1 for info in workers.values())
    groups: dict = {}
    for cell in cells:
        groups.setdefault(case_of(cell) if timed else cell.key, []).append(cell)
    found = []
    for group in groups.values():
        resources = {"timer": 1} if timed else {}
        if gpu and any(map(is_cuda, group)):
            resources["gpu"] = 1
        found.append((group, resources))
    return found


def case_of(cell) -> tuple:
    """What a cell shares with the other backends of its case: everything in its key but the backend."""
    from .descriptor import format_descriptor

    return cell.case, format_descriptor(cell.problem), str(cell.problem.dtype), cell.problem.has_bias, cell.tags


def finished_rows(future, cells: list) -> list[dict]:
    """The rows of a finished task: its result, or an ``error`` row per cell saying why it has none. A future
    cancelled under the sweep (the cluster went away) raises: its cells were not run, and ``--resume`` runs
    them. (A task whose result was lost with its worker after it finished is run again: this waits for it.)"""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except BaseException as exc:
        if future.cancelled():
            raise ClusterRefused(
                f"the Dask cluster cancelled cell {cells[0].key!r} (scheduler lost or shut "
                f"down?); the finished rows are on disk: --resume completes the run"
            ) from exc
        if not isinstance(exc, Exception):
            raise
        error = exc
    if isinstance(error, KilledWorker):
        last = getattr(error.last_worker, "address", error.last_worker)
        what = "this cell" if len(cells) == 1 else f"the task of this cell and {len(cells) - 1} other(s) of its case"
        message = (
            f"worker died: {what} was tried on {error.allowed_failures + 1} worker(s), and each died while "
            f"running it (the last: {last}): a cell crashes its process, or the workers were killed"
        )
    else:
        message = f"{type(error).__name__} on the Dask cluster: {error}"
    return [
        {**cell.columns(), "resolved_backend": "", "status": "error", "message": message, "host": "", "worker": ""}
        for cell in cells
    ]


def update_meta(run_dir: Path, change) -> None:
    """Apply ``change(meta)`` to ``run_dir/meta.json`` atomically, if the run has one (a bare ``run_sweep``
    into a directory has none)."""
    path = Path(run_dir) / "meta.json"
    if not path.exists():
        return
    meta = json.loads(path.read_text())
    change(meta)
    atomic_write_json(path, meta)


#: What meta.json keeps of a worker's description per worker; the rest is its host's.
WORKER_KEYS = ("pid", "daemon", "environment", "threadpools")


def record_hosts(run_dir: Path, scheduler: str, workers: dict, described: dict, warnings_: list) -> None:
    """meta.json's ``hosts``: each host's machine metadata (from :func:`~.dask_worker.describe`) and its
    workers (process id, resources, threads, daemonic, environment, thread pools); and a ``dask`` entry per
    session (a resumed run adds one)."""
    hosts: dict = {}
    for address, description in sorted(described.items()):
        host = hosts.setdefault(
            description["hostname"], {**{k: v for k, v in description.items() if k not in WORKER_KEYS}, "workers": {}}
        )
        info = workers.get(address, {})
        host["workers"][address] = {
            **{k: description.get(k) for k in WORKER_KEYS},
            "nthreads": info.get("nthreads"),
            "resources": info.get("resources", {}),
        }

    def change(meta):
        meta.setdefault("hosts", {}).update(hosts)
        meta.setdefault("dask", []).append(
            {
                "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "scheduler": scheduler,
                "workers": {
                    a: {"host": described.get(a, {}).get("hostname"), "resources": w.get("resources", {})}
                    for a, w in sorted(workers.items())
                },
                "warnings": list(warnings_),
            }
        )

    update_meta(run_dir, change)
