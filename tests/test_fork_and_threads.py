"""numba_cpu, torch and auto in processes that fork and in threads: a fork-based pool after parallel calls
works, and threads under Numba's workqueue layer are serialised (it aborts on concurrent parallel regions).

Tested in child processes that import this checkout's ``testbed``; a hang becomes a failure through the
child's timeout."""

from helpers import check, run_python


def test_fork_pool_after_parallel_calls_works():
    """numba_cpu (GNU OpenMP layer), torch (its OpenMP pool) and auto used in the parent, then a fork-based
    Pool whose workers call them: before, every worker died ("fork() called from a process already using GNU
    OpenMP") or deadlocked and ``Pool.map`` never returned."""
    out = check(
        run_python(
            """
        import multiprocessing, numpy as np, testbed
        rng = np.random.default_rng(0)
        x = rng.random((2, 32, 32, 32)).astype(np.float32)
        k2, k3 = rng.random((32, 16, 2, 2)).astype(np.float32), rng.random((32, 16, 3, 3)).astype(np.float32)
        small_x, small_w = rng.random((1, 2, 8, 8)), rng.random((2, 2, 3, 3))
        names = [b for b in ("numba_cpu", "torch", "auto") if testbed.get_backend(b).available]

        def work(_):
            return [testbed.conv_transpose2d(x, w, stride=2, backend=name)
                    for name in names for w in (k2, k3)] + [
                   testbed.conv_transpose2d(small_x, small_w, stride=2, backend="numba_cpu")]

        expected = work(0)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(work, range(4))
        assert all(np.allclose(a, b, rtol=1e-5) for r in results for a, b in zip(r, expected))
        print("ok", names)
    """,
            timeout=240,
        )
    )
    assert "ok" in out


def test_threads_under_workqueue_layer_are_serialised():
    """Numba's workqueue layer aborts the process (SIGABRT, "Concurrent access has been detected") when two
    threads run parallel regions at once; numba_cpu locks its kernels under that layer."""
    out = check(
        run_python(
            """
        import threading, numba, numpy as np, testbed
        from testbed.backends import numba_cpu
        rng = np.random.default_rng(1)
        calls = [(rng.random((2, 8, 16, 16)), rng.random((8, c, k, k)), dict(stride=s))
                 for c, k, s in ((1, 3, 2), (4, 3, 2), (4, 2, 2))]         # the direct and both GEMM paths
        expected = [testbed.conv_transpose2d(x, w, backend="numba_cpu", **p) for x, w, p in calls]
        failures = []

        def hammer():
            for _ in range(15):
                for (x, w, p), e in zip(calls, expected):
                    if not np.array_equal(testbed.conv_transpose2d(x, w, backend="numba_cpu", **p), e):
                        failures.append(p)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not failures, failures
        print(numba.threading_layer())
    """,
            env={"NUMBA_THREADING_LAYER": "workqueue"},
        )
    )
    assert out.strip().endswith("workqueue")
