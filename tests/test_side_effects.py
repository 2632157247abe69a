"""The library and the reports leave process-wide state alone: warning filters, thread-pool sizes (BLAS/OpenMP via
threadpoolctl, numba, torch, scipy.fft's workers), and matplotlib's backend (pyplot is never imported)."""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.fft

import testbed


def cpu_backends():
    return [name for name in testbed.available_backends() if testbed.get_backend(name).device != "cuda"]


def run_every_cpu_backend(read_only=False):
    """One small call per available CPU backend (kron: its own stride == kernel shape), with a bias."""
    rng = np.random.default_rng(0)
    for name in cpu_backends():
        stride = 2
        kernel = 2 if name == "kron" else 3
        x, w, b = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((4, 2, kernel, kernel)), rng.standard_normal(2)
        if read_only:
            for array in (x, w, b):
                array.flags.writeable = False
        testbed.conv_transpose2d(x, w, b, stride=stride, backend=name)


def thread_state():
    from threadpoolctl import threadpool_info

    state = {
        "pools": {(p["filepath"], p["user_api"]): p["num_threads"] for p in threadpool_info()},
        "scipy.fft workers": scipy.fft.get_workers(),
    }
    import numba

    state["numba"] = numba.get_num_threads()
    try:
        import torch
    except ImportError:
        return state
    state["torch"] = torch.get_num_threads()
    state["torch interop"] = torch.get_num_interop_threads()
    return state


def test_running_every_backend_changes_no_global_state():
    run_every_cpu_backend()  # load every library the backends use (each may add a thread pool) and JIT
    filters = list(warnings.filters)
    threads = thread_state()
    run_every_cpu_backend()
    run_every_cpu_backend(read_only=True)
    assert warnings.filters == filters
    after = thread_state()
    assert {k: v for k, v in after.items() if k != "pools"} == {k: v for k, v in threads.items() if k != "pools"}
    assert {k: after["pools"].get(k) for k in threads["pools"]} == threads["pools"]


def test_no_warning_filter_is_entered_per_call(monkeypatch):
    """Entering warnings.catch_warnings() swaps the process-wide filter list (not thread-safe); no backend may."""
    entered = []
    original = warnings.catch_warnings

    class Spy(original):
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    run_every_cpu_backend()
    monkeypatch.setattr(warnings, "catch_warnings", Spy)
    run_every_cpu_backend()
    run_every_cpu_backend(read_only=True)
    monkeypatch.undo()
    assert not entered


@pytest.mark.skipif("torch" not in testbed.available_backends(), reason="torch is not installed")
def test_read_only_input_to_torch_emits_no_warning():
    x = np.ones((1, 2, 3, 3))
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the call
        y = testbed.conv_transpose2d(x, np.ones((2, 1, 2, 2)), stride=2, backend="torch")
    assert np.array_equal(y, testbed.conv_transpose2d(x, np.ones((2, 1, 2, 2)), stride=2, backend="naive"))
    assert not x.flags.writeable


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fft_follows_scipy_set_workers(monkeypatch, rank):
    """fft passes no workers= of its own, so ``scipy.fft.set_workers`` (and scipy's default, 1) governs: rfftn,
    ifft over each leading axis (none in 1-D), irfft over the last."""
    from testbed.backends import fft as fft_backend

    seen = []

    def recording(name, function):
        def wrapper(*args, **kwargs):
            seen.append((name, kwargs.get("workers"), scipy.fft.get_workers()))
            return function(*args, **kwargs)

        return wrapper

    for name in ("rfftn", "ifft", "irfft"):
        monkeypatch.setattr(fft_backend.scipy.fft, name, recording(name, getattr(scipy.fft, name)))
    x, w = np.ones((1, 2, *(4,) * rank)), np.ones((2, 3, *(3,) * rank))
    with scipy.fft.set_workers(2):
        getattr(testbed, f"conv_transpose{rank}d")(x, w, stride=2, backend="fft")
    expected = ["rfftn", *["ifft"] * (rank - 1), "irfft"]
    assert [name for name, _, _ in seen] == expected
    assert all(workers is None and current == 2 for _, workers, current in seen), seen


def test_report_figure_leaves_matplotlib_alone(tmp_path):
    """In a fresh interpreter with a non-default backend chosen: a report figure is written, the backend is
    unchanged and pyplot was never imported."""
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import numpy as np, pandas as pd
        from experiments.harness import reporting
        frame = pd.DataFrame(np.arange(6.0).reshape(2, 3), index=["a", "b"], columns=["x", "y", "z"])
        reporting.heatmap_figure(frame, "t", "c", {str(tmp_path / "heat.png")!r})
        reporting.grouped_bar_figure(frame, "t", "y", {str(tmp_path / "bars.png")!r})
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("heat.png", "bars.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_library_imports_no_plotting_or_harness_module():
    """A fresh interpreter that imports testbed and runs every CPU backend never loads matplotlib (so it cannot
    change its backend), nor pandas or tabulate (the experiments' dependencies; tqdm is left out of the check
    because torch imports it)."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        from test_side_effects import run_every_cpu_backend
        run_every_cpu_backend()
        run_every_cpu_backend(read_only=True)
        loaded = sorted(m for m in ("matplotlib", "pandas", "tabulate") if m in sys.modules)
        assert not loaded, loaded
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
