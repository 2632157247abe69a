"""``numba_cpu``'s fused path for stride == kernel (GEMM blocks + pixel shuffle in one parallel region), its
reused workspace (:mod:`testbed.workspace`) and the BLAS thread count around it, in both layouts."""

import dataclasses
import resource
import threading

import numba
import numpy as np
import pytest

import testbed
from testbed import workspace
from testbed.backends import numba_cpu
from testbed.backends.numba_cpu.blocking import blocking
from testbed.problem import Problem
from testbed.testing import assert_close_to_oracle, call_kwargs


def _problem(
    c_in, c_out, size, kernel, padding=0, output_padding=0, groups=1, batch=1, layout="NCHW", dtype=np.float64
):
    return Problem(
        batch=batch,
        in_channels=c_in,
        in_size=size,
        out_channels=c_out,
        kernel_size=kernel,
        stride=kernel,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dtype=dtype,
        has_bias=True,
        layout=layout,
    )


# stride == kernel with crops, output_padding rows and columns, groups, batches, odd widths
CASES = {
    "k2": _problem(8, 6, (5, 7), 2, batch=2),
    "asym_pad_op": _problem(6, 4, (4, 5), (2, 3), padding=(1, 2), output_padding=(1, 2), batch=2),
    "groups": _problem(8, 12, (3, 5), 3, groups=2, output_padding=(2, 1)),
    "k1x4": _problem(6, 3, (6, 2), (1, 4), padding=(0, 1)),
    # four taps that are not 2 × 2 (the NHWC shuffle's U-Net branch must not take them)
    "k1x4_unpadded": _problem(5, 3, (3, 4), (1, 4)),
    "k4x1_unpadded": _problem(4, 6, (2, 3), (4, 1), batch=2),
}
# (bytes, width): one block for everything; blocks that split channels, rows (mid-row) and columns
BLOCKS = {"default": (blocking().block_bytes, blocking().block_width), "tiny": (7 * 8, 5), "row_split": (96, 12)}


def _blocks(name):
    return dataclasses.replace(blocking(), block_bytes=BLOCKS[name][0], block_width=BLOCKS[name][1])


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", CASES)
def test_blocks_match_oracle(name, layout, blocks):
    problem = CASES[name].with_(layout=layout)
    x, weight, bias = problem.random_arrays(1)
    y = numba_cpu.run_path("nonoverlap_gemm", x, weight, bias, problem, blocking=_blocks(blocks))
    assert y.shape == problem.output_shape and y.flags.c_contiguous
    assert_close_to_oracle(y, x, weight, bias, err_msg=f"{name} {layout} {blocks}", **call_kwargs(problem))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bitwise_the_same_for_every_thread_count_and_call(layout):
    """The blocks depend on the problem only, so one thread and all threads give identical bits."""
    problem = CASES["asym_pad_op"].with_(layout=layout, dtype=np.float32)
    x, weight, bias = problem.random_arrays(2)
    small = dataclasses.replace(blocking(), block_bytes=4 * 64)
    call = lambda: numba_cpu.run_path("nonoverlap_gemm", x, weight, bias, problem, blocking=small)  # noqa: E731
    first = call()
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = call()
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(first, single) and np.array_equal(first, call())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_stale_workspace_never_leaks(layout):
    """NaN left in the reused buffers by anything before must not reach the result (BLAS writes with beta 0)."""
    problem = CASES["k2"].with_(layout=layout)
    x, weight, bias = problem.random_arrays(3)
    kwargs = call_kwargs(problem)
    testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **kwargs)
    for name in (
        "numba_cpu.blocks",
        "numba_cpu.packed_weight",
        "numba_cpu.panel_weight",
        "numba_cpu.row_weight",
        "numba_cpu.pixel_panels",
    ):
        raw = workspace._pool().buffers.get(name)
        if raw is not None:
            raw.view(np.uint8)[:] = 0xFF  # all-ones bytes: NaN in float32 and float64
    y = testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **kwargs)
    assert np.isfinite(y).all()
    assert_close_to_oracle(y, x, weight, bias, **kwargs)


def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_repeated_calls_fault_only_on_their_output(layout):
    """With out= a repeated call page-faults on (almost) nothing; without, on no more than its output's pages.
    The output (35 MB) is above glibc's largest mmap threshold (32 MiB), so a temporary of its size is mapped
    and faulted afresh on every call: the old path's column buffer was, out= or not (~all its pages)."""
    problem = Problem(
        batch=1,
        in_channels=2,
        in_size=(520, 520),
        out_channels=8,
        kernel_size=2,
        stride=2,
        dtype=np.float32,
        layout=layout,
    )
    x, weight, _ = problem.random_arrays(4)
    kwargs = call_kwargs(problem)
    out = np.zeros(problem.output_shape, np.float32)

    def faults_per_call(call):
        for _ in range(2):
            call()
        before = _faults()
        for _ in range(3):
            call()
        return (_faults() - before) / 3

    assert faults_per_call(lambda: testbed.conv_transpose2d(x, weight, backend="numba_cpu", out=out, **kwargs)) < 8
    # (transparent huge pages make a fault cover up to 2 MiB: compare with allocating the output alone)
    output_alone = faults_per_call(lambda: np.empty(problem.output_shape, np.float32).fill(1.0))
    assert (
        faults_per_call(lambda: testbed.conv_transpose2d(x, weight, backend="numba_cpu", **kwargs))
        < 1.5 * output_alone + 8
    )
    assert testbed.conv_transpose2d(x, weight, backend="numba_cpu", **kwargs).ctypes.data % (2 * 2**20) == 0


def test_large_results_start_on_a_huge_page():
    """From 4 MiB up a result starts on a 2 MiB boundary, so huge pages can back all of it; a smaller one is
    np.empty's. Either is an ordinary writeable C-contiguous array of the shape and dtype asked for."""
    for shape, dtype, aligned in (
        ((3, 1000, 1001), np.float32, True),
        ((4, 1024, 1024), np.uint8, True),
        ((10, 10), np.float64, False),
        ((0, 5), np.float32, False),
    ):
        y = workspace.empty_result(shape, dtype)
        assert y.shape == shape and y.dtype == dtype and y.flags.c_contiguous and y.flags.writeable
        assert not aligned or y.ctypes.data % (2 * 2**20) == 0
        y[...] = 1  # every element is usable
        assert y.sum() == y.size


def test_clear_workspace_and_threads():
    """Each thread keeps its own buffers; clear_workspace releases every thread's; concurrent calls agree."""
    problem = CASES["groups"].with_(dtype=np.float32)
    x, weight, bias = problem.random_arrays(5)
    kwargs = call_kwargs(problem)
    expected = testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **kwargs)
    assert testbed.workspace_bytes() > 0
    results, barrier = [], threading.Barrier(3)

    def worker():
        barrier.wait()
        results.extend(testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **kwargs) for _ in range(5))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 15 and all(np.array_equal(r, expected) for r in results)
    testbed.clear_workspace()
    assert testbed.workspace_bytes() == 0
    assert np.array_equal(testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **kwargs), expected)


def test_scratch_reuses_grows_and_respects_the_cap(monkeypatch):
    testbed.clear_workspace()
    a = workspace.scratch("test.a", (10, 3), np.float32)
    assert a.shape == (10, 3) and a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    b = workspace.scratch("test.a", (5,), np.float64)
    assert np.shares_memory(a, b)  # reused: it fits
    c = workspace.scratch("test.a", (1000,), np.float64)
    assert not np.shares_memory(b, c) and workspace.workspace_bytes() >= 8000
    monkeypatch.setattr(workspace, "WORKSPACE_CACHE_BYTES", 10_000)
    d = workspace.scratch("test.b", (1000,), np.float64)  # would exceed the cap with test.a: not kept
    assert "test.b" not in workspace._pool().buffers and d.shape == (1000,)
    testbed.clear_workspace()
    assert testbed.workspace_bytes() == 0


def test_workspace_cap_from_the_environment(monkeypatch):
    monkeypatch.setenv("TESTBED_WORKSPACE_BYTES", "12345")
    assert workspace._cap_from_environment() == 12345
    monkeypatch.setenv("TESTBED_WORKSPACE_BYTES", "a lot")  # malformed: one warning, the default
    with pytest.warns(RuntimeWarning, match="TESTBED_WORKSPACE_BYTES='a lot'"):
        assert workspace._cap_from_environment() == 256 * 2**20


def test_blas_thread_count_is_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [
        (lib["filepath"], lib["num_threads"]) for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"
    ]
    problem = CASES["k2"]
    x, weight, bias = problem.random_arrays(6)
    testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **call_kwargs(problem))
    after = [
        (lib["filepath"], lib["num_threads"]) for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"
    ]
    assert after == before


def test_blas_limits_beyond_int32_fall_back():
    """A stride == kernel problem whose BLAS leading dimension would overflow 32 bits takes another path."""
    huge = Problem(batch=1, in_channels=4, in_size=(1, 2**31), out_channels=4, kernel_size=1, stride=1)
    assert numba_cpu.choose_path(huge) != "nonoverlap_gemm"
    assert numba_cpu.choose_path(huge.with_(in_size=(1, 2**20))) == "nonoverlap_gemm"


def test_tasks_are_handed_out_once_each_and_a_slow_worker_takes_fewer():
    """testbed.backends.numba_cpu.tasks: every task runs exactly once, in the parallel kernel and its serial twin; a
    worker stuck in a long task leaves the rest to the others (OpenMP's static split would not)."""
    from numba import prange

    from testbed.backends._runtime import parallel_kernel
    from testbed.backends.numba_cpu.tasks import next_task

    def spin(owner, work, workers):
        counter = np.zeros(1, np.int64)
        for worker in prange(workers):
            task = next_task(counter)
            while task < owner.shape[0]:
                total = 0.0
                for i in range(work[task]):
                    total += np.sqrt(i + 1.0)
                owner[task] = worker if total >= 0 else -2
                task = next_task(counter)

    kernel = parallel_kernel(spin)
    for run in (kernel, kernel.serial):
        owner = np.full(1000, -1)
        run(owner, np.full(1000, 10), 3)
        assert (owner >= 0).all() and (owner < 3).all()
    if numba.get_num_threads() >= 2:
        owner, work = np.full(8, -1), np.full(8, 10**5)
        work[0] = 10**8  # ~0.1 s: the other worker finishes 1..7 meanwhile
        kernel(owner, work, 2)
        assert (owner[1:] != owner[0]).all()
