"""testbed.machine: the one description of the host and the process, and those that read it (the wisdom
fingerprint, timing's machine state, a run's meta.json, the Dask version check)."""

import importlib.metadata
import os
import subprocess

import pytest

from experiments.harness import executors
from experiments.harness.metadata import PROJECT_ROOT, machine_meta
from testbed import isa, machine, timing, wisdom


def test_describe_has_every_part():
    described = machine.describe()
    assert set(described) == {
        "hostname",
        "platform",
        "cpu_model",
        "cpu",
        "versions",
        "git",
        "threads",
        "threadpools",
        "environment",
        "load_average",
        "cpu_governor",
        "device",
    }
    cpu = described["cpu"]
    assert cpu["isa"] == isa.selected_isa() and cpu["count"] == os.cpu_count() >= 1
    assert 1 <= cpu["affinity"] <= cpu["count"] and cpu["memory_bytes"] > 2**20
    assert described["threads"]["numba_threads"] >= 1
    assert {"cuda_simulator", "gpu"} <= set(described["device"])
    assert set(described["versions"]) == {"python", "testbed", *machine.LIBRARIES}


def test_versions_come_from_package_metadata(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9-test" if name == "scipy" else real(name))
    versions = machine.library_versions()
    assert versions["scipy"] == "9.9-test" and versions["numpy"] == real("numpy")
    assert machine.library_versions(["no-such-distribution"])["no-such-distribution"] is None


def test_environment_keeps_only_the_variables_that_change_timings(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    timing_env = machine.environment()
    assert timing_env["MALLOC_ARENA_MAX"] == "2" and timing_env["OMP_NUM_THREADS"] == "1"
    assert "UNRELATED_VARIABLE" not in timing_env and list(timing_env) == sorted(timing_env)
    assert machine.environment(["OMP_NUM_THREADS"], ()) == {"OMP_NUM_THREADS": "1"}


def test_git_state_of_a_checkout_and_of_a_folder_that_is_none(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    state = machine.git_state(PROJECT_ROOT)
    assert state["commit"] == head.stdout.strip() and state["short"] == state["commit"][:7]
    # a folder inside a repository but not its root (a wheel's site-packages in a venv inside a checkout) is not
    # given that repository's commit
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "outer"], cwd=tmp_path, check=True)
    (tmp_path / "site-packages").mkdir()
    assert machine.git_state(tmp_path)["commit"] is not None
    assert machine.git_state(tmp_path / "site-packages") == {"commit": None, "short": "nogit", "dirty": None}


def test_the_readers_agree_with_the_description():
    fingerprint = wisdom.machine_fingerprint()
    cpu = machine.cpu()
    assert (fingerprint["cpu_model"], fingerprint["isa"], fingerprint["cpu_count"]) == (
        cpu["model"],
        cpu["isa"],
        cpu["count"],
    )
    assert fingerprint["versions"] == machine.library_versions(wisdom.FINGERPRINT_LIBRARIES)
    assert timing.machine_state().keys() == machine.describe().keys()
    meta = machine_meta()
    assert meta["cpu"] == cpu and meta["load_average_before"] == meta["threads"]["load_average_1_5_15min"]
    assert {"pandas", "matplotlib"} <= set(meta["versions"])


def test_the_dask_check_compares_the_librarys_versions():
    dask_worker = pytest.importorskip("experiments.harness.dask_worker", exc_type=ImportError)
    described = dask_worker.describe()
    compared = executors.compared_versions(described)
    assert set(compared) == {"python", "testbed", *machine.LIBRARIES, "testbed commit"}  # not pandas: not compared
    assert described["pid"] == os.getpid()
