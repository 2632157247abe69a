"""``testbed.use_backend`` (a contextvars-scoped default backend) and ``testbed.resolve_backend`` (the backend a
call runs, ``auto``'s choice included)."""

import asyncio
import sys
import threading

import numpy as np
import pytest

import testbed
from testbed import planner, preference

rng = np.random.default_rng(0)
X = rng.standard_normal((1, 4, 5, 5))
W = rng.standard_normal((4, 2, 2, 2))

# The first U-Net up-convolution and a depthwise decoder layer (shapes only: nothing is computed).
UNET = (np.empty((1, 1024, 28, 28), np.float32), np.empty((1024, 512, 2, 2), np.float32))
UNET_ARGS = {"stride": 2}
DEPTHWISE = (np.empty((1, 128, 64, 64), np.float32), np.empty((128, 1, 4, 4), np.float32))
DEPTHWISE_ARGS = {"stride": 2, "padding": 1, "groups": 128}


def resolved(**kwargs):
    return testbed.resolve_backend(X, W, stride=2, **kwargs).name


def first_usable(key, problem):
    return next(
        name
        for name in preference.preference_table().orders[key]
        if testbed.get_backend(name).available and testbed.get_backend(name).supports(problem)
    )


def test_default_is_auto():
    assert resolved() == planner.choose_backend(testbed.Problem.from_shapes(X.shape, W.shape, stride=2)).name


def recording_backend(calls, name="spy"):
    """An unregistered backend that records each problem it is given and returns zeros."""
    return testbed.Backend(
        name=name,
        description="records its calls",
        run=lambda x, w, b, problem: calls.append(problem) or np.zeros(problem.output_shape),
    )


def test_use_backend_runs_the_scoped_backend():
    calls = []
    spy = recording_backend(calls)
    with testbed.use_backend(spy) as entered:
        assert entered is spy
        y = testbed.conv_transpose2d(X, W, stride=2)
    assert len(calls) == 1 and calls[0].output_shape == y.shape
    testbed.conv_transpose2d(X, W, stride=2)
    assert len(calls) == 1  # outside the block the scope is gone


def test_use_backend_result_matches_the_named_backend():
    with testbed.use_backend("col2im"):
        scoped = testbed.conv_transpose2d(X, W, stride=2)
    assert np.array_equal(scoped, testbed.conv_transpose2d(X, W, stride=2, backend="col2im"))


def test_nesting_innermost_wins_and_restores():
    with testbed.use_backend("col2im"):
        assert resolved() == "col2im"
        with testbed.use_backend("naive"):
            assert resolved() == "naive"
            with testbed.use_backend("polyphase"):
                assert resolved() == "polyphase"
            assert resolved() == "naive"
        assert resolved() == "col2im"
    assert resolved() == resolved(backend="auto")


def test_explicit_argument_beats_the_scope():
    with testbed.use_backend("naive"):
        assert resolved(backend="col2im") == "col2im"
        assert resolved(backend="auto") == resolved(backend="auto")  # auto's choice, not the scoped naive
        assert resolved(backend="auto") != "naive"


def test_scoped_auto_resolves_to_its_choice():
    with testbed.use_backend("auto"):
        assert resolved() == resolved(backend="auto") != "auto"


def test_exception_restores_the_outer_backend():
    with testbed.use_backend("col2im"):
        with pytest.raises(RuntimeError, match="boom"), testbed.use_backend("naive"):
            assert resolved() == "naive"
            raise RuntimeError("boom")
        assert resolved() == "col2im"
    assert resolved() != "col2im"


def test_decorator_form():
    @testbed.use_backend("naive")
    def inside():
        return resolved()

    assert inside() == "naive" and resolved() != "naive"


def test_threads_each_see_their_own():
    barrier = threading.Barrier(3)
    seen = {}

    def worker(name):
        with testbed.use_backend(name):
            barrier.wait(timeout=30)  # all three are inside their blocks at once
            seen[name] = resolved()
            barrier.wait(timeout=30)

    def outsider():
        barrier.wait(timeout=30)
        seen["outside"] = resolved()  # a thread that never entered a block: auto
        barrier.wait(timeout=30)

    with testbed.use_backend("polyphase"):  # the main thread's scope does not leak into new threads
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("naive", "col2im")]
        threads.append(threading.Thread(target=outsider))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert resolved() == "polyphase"
    # a new thread starts from an empty context (or a copy of its starter's, with -X thread_inherit_context)
    outside = "polyphase" if getattr(sys.flags, "thread_inherit_context", 0) else resolved(backend="auto")
    assert seen == {"naive": "naive", "col2im": "col2im", "outside": outside}


def test_asyncio_tasks_each_see_their_own():
    async def task(name, started, release):
        with testbed.use_backend(name):
            started.set()
            await release.wait()  # the other task enters its block meanwhile
            return resolved()

    async def main():
        events = {n: (asyncio.Event(), asyncio.Event()) for n in ("naive", "col2im")}
        tasks = [asyncio.create_task(task(n, *events[n])) for n in events]
        for started, _ in events.values():
            await started.wait()
        outside = resolved()  # the event loop's own context saw neither block
        for _, release in events.values():
            release.set()
        return outside, await asyncio.gather(*tasks)

    with testbed.use_backend("polyphase"):
        outside, results = asyncio.run(main())
    assert results == ["naive", "col2im"]
    assert outside == "polyphase"  # asyncio.run copies the caller's context: the enclosing block holds


def test_bad_name_fails_at_entry():
    with pytest.raises(ValueError, match=r"backend must be one of \[.*'naive'.*\], got 'cudnn'"):
        testbed.use_backend("cudnn")
    with pytest.raises(ValueError, match="got None"):
        testbed.use_backend(None)
    assert resolved() == resolved(backend="auto")  # nothing was entered


def test_resolve_auto_unet_vs_depthwise():
    unet = testbed.Problem.from_shapes(UNET[0].shape, UNET[1].shape, dtype=np.float32, **UNET_ARGS)
    depthwise = testbed.Problem.from_shapes(DEPTHWISE[0].shape, DEPTHWISE[1].shape, dtype=np.float32, **DEPTHWISE_ARGS)
    assert preference.problem_class(unet) == "nonoverlapping" and preference.problem_class(depthwise) == "depthwise"
    got_unet = testbed.resolve_backend(*UNET, **UNET_ARGS)
    got_depthwise = testbed.resolve_backend(*DEPTHWISE, **DEPTHWISE_ARGS)
    assert got_unet.name == first_usable("nonoverlapping", unet) == "numba_cpu"
    assert got_depthwise.name == first_usable("depthwise", depthwise)
    assert isinstance(got_unet, testbed.Backend) and got_unet is testbed.get_backend("numba_cpu")


def test_resolve_auto_without_torch(monkeypatch):
    from testbed.backends import torch_backend

    monkeypatch.setattr(torch_backend, "_torch", lambda: None)
    assert testbed.resolve_backend(*DEPTHWISE, **DEPTHWISE_ARGS).name == "numba_cpu"


@pytest.mark.parametrize("name", ["naive", "col2im", "kron", "numba_cpu"])
def test_resolve_explicit_name(name):
    assert testbed.resolve_backend(*UNET, **UNET_ARGS, backend=name) is testbed.get_backend(name)


def test_resolve_validates_like_the_call():
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'cudnn'"):
        testbed.resolve_backend(X, W, backend="cudnn")
    with pytest.raises(testbed.UnsupportedConfiguration, match="kron"):
        testbed.resolve_backend(*DEPTHWISE, **DEPTHWISE_ARGS, backend="kron")
    with pytest.raises(ValueError, match=r"weight.shape\[0\] \(3\) must equal"):
        testbed.resolve_backend(X, W[:3])
    with pytest.raises(TypeError, match="weight dtype"):
        testbed.resolve_backend(X, W.astype(np.float32))


def test_resolve_unavailable_backend(monkeypatch):
    from testbed.backends import torch_backend

    monkeypatch.setattr(torch_backend, "_torch", lambda: None)
    with pytest.raises(testbed.BackendUnavailable, match="torch"):
        testbed.resolve_backend(X, W, backend="torch")


def test_call_runs_the_resolved_backend():
    """A dispatcher's choice is what both resolve_backend answers and conv_transpose2d runs."""
    calls, never = [], []
    target = recording_backend(calls, "target")
    dispatcher = testbed.Backend(
        name="dispatcher",
        description="always picks target",
        device="any",
        run=recording_backend(never).run,
        choose=lambda problem, on_device: target,
    )
    assert testbed.resolve_backend(X, W, stride=2, backend=dispatcher) is target
    with testbed.use_backend(dispatcher):
        assert testbed.resolve_backend(X, W, stride=2) is target
        testbed.conv_transpose2d(X, W, stride=2)
    assert len(calls) == 1 and not never


def test_auto_resolves_through_its_choice_function():
    problem = testbed.Problem.from_shapes(X.shape, W.shape, stride=2)
    assert testbed.get_backend("auto").resolve(problem) is planner.choose_backend(problem)
    assert testbed.get_backend("col2im").resolve(problem) is testbed.get_backend("col2im")


def test_runner_records_the_resolved_backend():
    from experiments.harness.runner import ROW_COLUMNS, Cell, run_cell

    problem = testbed.Problem.from_shapes(X.shape, W.shape, stride=2)
    overlapping = testbed.Problem.from_shapes(X.shape, (4, 2, 3, 3), stride=2)
    rows = {
        name: run_cell(Cell("c", p, name), lambda cell, backend: {})
        for name, p in (("auto", problem), ("col2im", problem), ("kron", overlapping))
    }
    assert rows["auto"]["resolved_backend"] == planner.choose_backend(problem).name == "numba_cpu"
    assert rows["col2im"]["resolved_backend"] == "col2im"
    assert rows["kron"]["status"] == "unsupported" and rows["kron"]["resolved_backend"] == ""
    assert "resolved_backend" in ROW_COLUMNS


@pytest.mark.cudasim
def test_resolve_auto_follows_device_arrays():
    """CUDA device arrays resolve to the first available CUDA backend of auto's device list (simulator or GPU)."""
    device_row = preference.preference_table().orders[preference.DEVICE]
    first = next((name for name in device_row if testbed.get_backend(name).available), None)
    if first is None:
        pytest.skip("no CUDA backend is available (no GPU, NUMBA_ENABLE_CUDASIM unset)")
    from numba import cuda

    x, w = cuda.to_device(X), cuda.to_device(W)
    assert testbed.resolve_backend(x, w, stride=2).name == first
    with testbed.use_backend("col2im"), pytest.raises(TypeError, match="input is a CUDA device array"):
        testbed.resolve_backend(x, w, stride=2)
