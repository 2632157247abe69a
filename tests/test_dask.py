"""Sweeps on Dask distributed (experiments/harness/executors.py): the same cells and statuses as the local
executor, on a cluster the run starts and on one started apart (``dask scheduler`` + ``dask worker``
processes); a worker killed mid-sweep loses and duplicates nothing; a cell that kills every worker it runs on
becomes an ``error`` row; timing cells never overlap on a host; versions and timer resources are checked
before a sweep. Every address is 127.0.0.1; every process started here is ended here."""

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from experiments import correctness, speed, tune  # noqa: E402
from experiments.common import RunRefused  # noqa: E402
from experiments.harness import dask_worker, executors  # noqa: E402
from experiments.harness.executors import ClusterRefused, DaskExecutor, local_cluster, timing_overlaps  # noqa: E402
from experiments.harness.metadata import PROJECT_ROOT  # noqa: E402
from experiments.harness.runner import grid, run_sweep  # noqa: E402
from testbed.problem import Problem  # noqa: E402

FAST = "naive,col2im,kron"  # kron declines some cases: statuses other than ok take part
QUIET = ["--quick", "--no-progress", "--backends", FAST]
CASES = {
    f"c{i}": Problem(batch=1, in_channels=2, in_size=3 + i % 3, out_channels=2, kernel_size=2, stride=2)
    for i in range(6)
}


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines() if line.strip()]


def statuses(run_dir: Path) -> dict:
    frame = pd.read_csv(run_dir / "results.csv")
    return dict(zip(frame["cell_key"], frame["status"]))


def worker_pids(client) -> dict:
    return client.run(os.getpid)


def timer_workers(client) -> list[str]:
    return [a for a, w in client.scheduler_info()["workers"].items() if w["resources"].get("timer")]


# measures for run_sweep on the cluster: module level, so the workers import them by reference


def slow_sum(cell, backend):
    time.sleep(0.3)
    x, weight, bias = cell.problem.random_arrays(0)
    return {"total": float(np.asarray(backend.run(x, weight, bias, cell.problem)).sum())}


def crash_on_c0(cell, backend):
    if cell.case == "c0":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid()}


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of two worker processes (one offers timer=1), shared by the tests that need one."""
    with local_cluster(2) as running:
        yield running


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as connected:
        connected.wait_for_workers(2, timeout=120)
        yield connected


@pytest.fixture(scope="module")
def local_correctness(tmp_path_factory):
    return correctness.main([*QUIET, "--out", str(tmp_path_factory.mktemp("local") / "run")])


# ---- without a cluster ------------------------------------------------------------------------------------------


def test_without_dask_the_option_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(SystemExit):
        correctness.build_parser().parse_args(["--executor", "dask"])
    assert "pip install 'convtranspose-testbed[dask]'" in capsys.readouterr().err


def test_executor_arguments_that_do_not_go_together_are_refused(tmp_path):
    with pytest.raises(RunRefused, match=r"--scheduler .* needs --executor dask"):
        correctness.main([*QUIET, "--scheduler", "tcp://127.0.0.1:1", "--out", str(tmp_path / "a")])
    with pytest.raises(RunRefused, match="tune runs here only"):
        tune.main(["--quick", "--no-progress", "--executor", "dask", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_timing_overlaps_finds_overlapping_spans_per_host():
    rows = [
        {"cell_key": "a", "host": "h1", "started_at": 0.0, "finished_at": 2.0},
        {"cell_key": "b", "host": "h1", "started_at": 2.0, "finished_at": 3.0},  # touches a: no overlap
        {"cell_key": "c", "host": "h2", "started_at": 0.5, "finished_at": 1.0},  # another host
        {"cell_key": "d", "host": "h1", "started_at": 2.5, "finished_at": 2.6},  # inside b
        {"cell_key": "e", "host": "h1"},
    ]  # no stamps
    assert timing_overlaps(rows) == [("h1", "b", "d")]
    assert timing_overlaps(rows[:3]) == []


def test_two_timers_on_a_host_or_a_daemonic_timer_are_refused():
    def workers(*resources):
        return {f"tcp://127.0.0.1:{i}": {"host": "127.0.0.1", "resources": r} for i, r in enumerate(resources)}

    def identities(count, daemon=False):
        return {f"tcp://127.0.0.1:{i}": {"hostname": "h", "daemon": daemon, "environment": {}} for i in range(count)}

    check = DaskExecutor()._check_timers
    with pytest.raises(ClusterRefused, match="host h offers 2 timer slots"):
        check(workers({"timer": 1}, {"timer": 1}), identities(2), {"environment": {}})
    with pytest.raises(ClusterRefused, match="no worker of the cluster offers the 'timer' resource"):
        check(workers({}, {"gpu": 1}), identities(2), {"environment": {}})
    with pytest.raises(ClusterRefused, match="daemonic"):
        check(workers({"timer": 1}, {}), identities(2, daemon=True), {"environment": {}})
    warned = check(workers({"timer": 1}, {}), identities(2), {"environment": {"OMP_NUM_THREADS": "1"}})
    assert len(warned) == 1 and "OMP_NUM_THREADS=None (client 1)" in warned[0]


def test_timed_sweeps_send_whole_cases_to_timers_and_cuda_cells_go_to_gpu_workers():
    cells = grid({"c0": CASES["c0"], "c1": CASES["c1"]}, ["col2im", "numba_cuda", "naive"])
    no_gpu = {"w0": {"resources": {"timer": 1}}, "w1": {"resources": {}}}
    with_gpu = {"w0": {"resources": {"timer": 1, "gpu": 1}}, "w1": {"resources": {}}}
    untimed = executors.tasks(cells, False, with_gpu)
    assert [len(group) for group, _ in untimed] == [1] * 6
    assert [resources for _, resources in untimed] == [{}, {"gpu": 1}, {}] * 2
    assert [resources for _, resources in executors.tasks(cells, False, no_gpu)] == [{}] * 6  # nowhere else
    timed = executors.tasks(cells, True, with_gpu)
    assert [[c.backend_name for c in group] for group, _ in timed] == [["col2im", "numba_cuda", "naive"]] * 2
    assert [resources for _, resources in timed] == [{"timer": 1, "gpu": 1}] * 2
    assert [resources for _, resources in executors.tasks(cells, True, no_gpu)] == [{"timer": 1}] * 2


def test_a_module_run_with_dash_m_pickles_its_functions_by_reference(monkeypatch):
    import pickle
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="testbed_dask_fake_experiment")

    def measure_in_worker():
        return 1

    measure_in_worker.__module__, measure_in_worker.__qualname__ = "__main__", "measure_in_worker"
    main.measure_in_worker = measure_in_worker
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.delitem(sys.modules, "testbed_dask_fake_experiment", raising=False)
    executors.name_main_module()
    assert sys.modules["testbed_dask_fake_experiment"] is main
    assert measure_in_worker.__module__ == "testbed_dask_fake_experiment"
    assert pickle.loads(pickle.dumps(measure_in_worker)) is measure_in_worker  # by reference, by that name


# ---- on a local cluster -----------------------------------------------------------------------------------------


def test_correctness_on_a_cluster_it_starts_matches_the_local_executor(tmp_path, local_correctness):
    run_dir = correctness.main([*QUIET, "--executor", "dask", "--workers", "2", "--out", str(tmp_path / "run")])
    assert statuses(run_dir) == statuses(local_correctness)
    local, remote = (pd.read_csv(d / "results.csv").set_index("cell_key") for d in (local_correctness, run_dir))
    ok = local["status"] == "ok"
    np.testing.assert_allclose(remote.loc[ok[ok].index, "rel_l2"], local.loc[ok, "rel_l2"], rtol=1e-12)
    rows = rows_of(run_dir)
    assert len(rows) == len({row["cell_key"] for row in rows}) == len(local)
    assert {row["host"] for row in rows} == {socket.gethostname()}
    assert len({row["worker"] for row in rows}) == 2, "untimed cells should run on both workers"
    assert timing_overlaps(rows), "untimed cells run at once (and the stamps show it)"
    meta = json.loads((run_dir / "meta.json").read_text())
    host = meta["hosts"][socket.gethostname()]
    assert {"cpu_model", "versions", "threads", "device", "load_average_before", "git"} <= set(host)
    assert all({"threadpools", "environment", "pid"} <= set(w) for w in host["workers"].values())
    assert sorted(w["resources"].get("timer", 0) for w in host["workers"].values()) == [0, 1]
    assert not any(w["daemon"] for w in host["workers"].values())
    assert meta["dask"][0]["scheduler"] == "LocalCluster" and "executor" not in meta["arguments"]
    assert "MALLOC_TRIM_THRESHOLD_" not in json.dumps(host["workers"])  # the nanny's default is not set


def test_speed_on_a_cluster_matches_local_and_timings_never_overlap(tmp_path, cluster, client):
    arguments = [*QUIET, "--baseline", "col2im"]
    local = speed.main([*arguments, "--out", str(tmp_path / "local")])
    run_dir = speed.main(
        [*arguments, "--executor", "dask", "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "dask")]
    )
    assert statuses(run_dir) == statuses(local)
    rows = rows_of(run_dir)
    assert all(row["started_at"] < row["finished_at"] for row in rows)
    assert timing_overlaps(rows) == []
    for host in {row["host"] for row in rows}:  # the same check, written out
        spans = sorted((row["started_at"], row["finished_at"]) for row in rows if row["host"] == host)
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert {row["worker"] for row in rows} <= set(timer_workers(client))
    frame = pd.read_csv(run_dir / "results.csv")
    assert (frame.loc[frame["backend"].eq("col2im") & frame["status"].eq("ok"), "speedup"] == 1).all()


def test_a_worker_killed_mid_sweep_loses_and_duplicates_nothing_and_resume_works(tmp_path, cluster, client):
    cells = grid(CASES, ["naive", "col2im"], (np.float32, np.float64))
    run_sweep(cells[:4], slow_sum, tmp_path, progress=False)  # a run begun by the local executor
    pids = worker_pids(client)
    victim = next(a for a in pids if a not in timer_workers(client))
    killed = {}

    def kill_when_running():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(rows_of(tmp_path)) >= 8:  # 4 local rows, 4 from the cluster
                killed["rows_then"] = len(rows_of(tmp_path))
                os.kill(pids[victim], signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    try:
        frame = run_sweep(
            cells, slow_sum, tmp_path, resume=True, progress=False, executor=DaskExecutor(cluster.scheduler_address)
        )
    finally:
        killer.join()
    assert killed and killed["rows_then"] < len(cells), "the worker was not killed mid-sweep"
    rows = rows_of(tmp_path)
    keys = [row["cell_key"] for row in rows]
    assert len(keys) == len(set(keys)) == len(cells), "a cell was lost or recorded twice"
    assert set(keys) == {cell.key for cell in cells}
    assert (frame["status"] == "ok").all(), frame[frame["status"] != "ok"][["cell_key", "message"]]
    assert [row.get("host") for row in rows[:4]] == [None] * 4  # the local rows, kept
    assert pids[victim] not in worker_pids(client).values()  # (its nanny restarts it)


def test_versions_that_differ_from_the_workers_are_refused_before_the_sweep(tmp_path, cluster, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    # this process reads another NumPy version from the package metadata; the workers read theirs
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0-test" if name == "numpy" else real(name))
    cells = grid(CASES, ["naive"])
    with pytest.raises(ClusterRefused, match=r"numpy \S+ \(client 0.0-test\)"):
        run_sweep(cells, slow_sum, tmp_path, progress=False, executor=DaskExecutor(cluster.scheduler_address))
    assert not (tmp_path / "rows.jsonl").exists() or not rows_of(tmp_path)
    frame = run_sweep(
        cells[:1],
        slow_sum,
        tmp_path / "allowed",
        progress=False,
        executor=DaskExecutor(cluster.scheduler_address, allow_version_mismatch=True),
    )
    assert list(frame["status"]) == ["ok"]


# ---- a cluster started apart: dask scheduler + dask worker processes --------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def processes():
    """Start processes (each in a session of its own); every one is ended, with its children, on leaving."""
    started = []

    def start(*command):
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "dask", *command],
                cwd=PROJECT_ROOT,
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    try:
        yield start
    finally:
        for process in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the session's worker processes too
            process.wait()


def test_scheduler_address_of_a_cluster_started_apart_gives_the_local_cells(tmp_path, local_correctness):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    worker = [
        "worker",
        address,
        "--host",
        "127.0.0.1",
        "--nworkers",
        "1",
        "--nthreads",
        "1",
        "--no-dashboard",
        "--preload-nanny",
        "experiments.harness.dask_worker",
    ]
    with processes() as start:
        start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        start(*worker, "--resources", "timer=1")
        start(*worker)
        with distributed.Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
        run_dir = correctness.main(
            [*QUIET, "--executor", "dask", "--scheduler", address, "--out", str(tmp_path / "run")]
        )
    assert statuses(run_dir) == statuses(local_correctness)
    rows = rows_of(run_dir)
    assert len(rows) == len({row["cell_key"] for row in rows})
    meta = json.loads((run_dir / "meta.json").read_text())
    workers = meta["hosts"][socket.gethostname()]["workers"]
    assert len(workers) == 2 and meta["dask"][0]["scheduler"] == address
    # the preload made the workers fit for timing: not daemonic, none of the nanny's variables
    assert not any(w["daemon"] for w in workers.values())
    assert not any(
        name in w["environment"]
        for w in workers.values()
        for name in dask_worker.NANNY_TIMING_VARIABLES
        if name not in os.environ
    )


# last of the tests on the shared cluster: it leaves a worker restarting


def test_a_cell_that_kills_every_worker_it_runs_on_is_an_error_row(tmp_path, cluster, client):
    cells = grid({name: CASES[name] for name in ("c0", "c1")}, ["naive"])
    allowed = cluster.scheduler.allowed_failures
    cluster.scheduler.allowed_failures = 0  # one death, not four
    try:
        frame = run_sweep(
            cells, crash_on_c0, tmp_path, progress=False, executor=DaskExecutor(cluster.scheduler_address)
        )
    finally:
        cluster.scheduler.allowed_failures = allowed
    status = dict(zip(frame["case"], frame["status"]))
    assert status == {"c0": "error", "c1": "ok"}
    message = frame.set_index("case").loc["c0", "message"]
    assert message.startswith("worker died: this cell was tried on 1 worker(s), and each died while running it")
    assert len(rows_of(tmp_path)) == 2


# ---- reports of a run that spans several hosts (no cluster needed) ----------------------------------------------


def two_host_speed_rows(scale: float = 1.0, swap: bool = False) -> pd.DataFrame:
    h1, h2 = ("h2", "h1") if swap else ("h1", "h2")
    rows = [
        ("c1", "col2im", h1, 1.0),
        ("c1", "naive", h1, 2.0),
        ("c2", "col2im", h2, 4.0),
        ("c2", "naive", h2, 2.0),
        ("c3", "col2im", h1, 1.0),
        ("c3", "naive", h2, 1.0),
    ]  # c3: a case split over hosts (failover)
    return pd.DataFrame(
        [
            {
                "cell_key": f"{case}|{backend}",
                "case": case,
                "backend": backend,
                "dtype": "float32",
                "status": "ok",
                "message": "",
                "median_s": median * scale * 1e-3,
                "host": host,
            }
            for case, backend, host, median in rows
        ]
    )


def test_a_run_on_several_hosts_compares_each_time_with_its_own_hosts_baseline():
    from experiments import report

    frame = speed.add_speedup("col2im")(two_host_speed_rows())
    speedup = dict(zip(frame["cell_key"], frame["speedup"]))
    assert speedup["c1|naive"] == pytest.approx(0.5) and speedup["c2|naive"] == pytest.approx(2.0)
    assert np.isnan(speedup["c3|naive"]), "a speedup across hosts compares machines, not backends"
    assert list(speed._pivot(frame, "median_s").index) == ["c1 @ h1", "c2 @ h2", "c3 @ h1", "c3 @ h2"]

    table = report.compare_frames(frame, two_host_speed_rows(scale=2.0, swap=True), "median_s")
    assert {"host_A", "host_B"} <= set(table) and (table["ratio_B_over_A"] == 2).all()
    by_host = report.ratios_by_host(table)
    assert set(zip(by_host["host_A"], by_host["host_B"])) == {("h1", "h2"), ("h2", "h1")}
    assert (by_host["geometric_mean_B_over_A"] == 2).all() and by_host["cells"].sum() == len(table)


def test_reports_name_the_hosts_and_count_cells_per_host(tmp_path):
    from experiments.harness.reporting import finish_report, hosts_lines

    first = {
        "cpu_model": "CPU one",
        "threads": {"cpu_count": 8},
        "versions": {"numpy": "2"},
        "git": {"short": "abc"},
        "workers": {"tcp://127.0.0.1:1": {"resources": {"timer": 1}}},
    }
    meta = {
        "hosts": {"h1": first, "h2": {"cpu_model": "CPU two", "workers": {}}},
        "dask": [{"scheduler": "tcp://127.0.0.1:8786", "warnings": ["timer worker ... environment"]}],
    }
    text = hosts_lines(meta)
    assert "`h1`: CPU one, 8 cores" in text and "resources timer=1" in text and "`h2`: CPU two" in text
    assert "scheduler tcp://127.0.0.1:8786" in text and "warning: timer worker" in text
    report_text = finish_report(tmp_path, ["# test"], two_host_speed_rows(), ["case", "backend", "status"])
    assert "## Cells per host" in report_text and "| h2 " in report_text
