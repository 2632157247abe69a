"""The numba.cuda backends against the float64 ``naive`` oracle, in numba's CUDA simulator (or on a GPU).

Run in its own process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cudasim`` (``make test-cudasim``).
The simulator runs one Python thread per CUDA thread, so every shape here is tiny (outputs of a few hundred
elements). The same tests run unchanged on a real GPU.
"""

import numpy as np
import pytest

import testbed
from conftest import RTOL, call_arrays, rel_error
from testbed.problem import Problem

pytestmark = pytest.mark.cudasim

CUDA_BACKENDS = [name for name in testbed.list_backends() if testbed.get_backend(name).device == "cuda"]
if not CUDA_BACKENDS or not all(testbed.get_backend(name).available for name in CUDA_BACKENDS):
    pytest.skip("no CUDA GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: numba.cuda is the simulator or a GPU from here on)

from testbed.backends import numba_cuda  # noqa: E402

GATHER_BACKENDS = [name for name in CUDA_BACKENDS if testbed.get_backend(name).deterministic]
SIMULATED = numba_cuda.probe()[1] == numba_cuda.SIMULATOR_STATUS

# (name, batch, C_in, C_out, (H, W), (kH, kW), params)
CASES = [
    ("unet_k2s2", 2, 3, 2, (3, 4), (2, 2), dict(stride=2)),
    ("k3s2p1op1", 1, 3, 2, (3, 4), (3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("asym_groups", 1, 4, 6, (3, 4), (3, 2), dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2)),
    ("depthwise", 2, 3, 3, (3, 3), (3, 3), dict(stride=2, padding=1, groups=3)),
    ("dilated_strided_op", 1, 2, 3, (3, 4), (2, 3), dict(stride=(3, 2), output_padding=(2, 1), dilation=(3, 2))),
    ("gcd_stride_dilation", 1, 2, 2, (3, 3), (3, 3), dict(stride=(4, 3), padding=(1, 2), dilation=(6, 2))),
    ("op_lt_dilation", 1, 2, 2, (3, 4), (2, 2), dict(stride=1, output_padding=1, dilation=2)),
    ("stride_gt_kernel_big_padding", 2, 2, 2, (4, 3), (3, 2), dict(stride=3, padding=(3, 1), output_padding=2)),
    ("k1s1", 1, 3, 2, (4, 5), (1, 1), dict()),
]


def _oracle(x, w, b, **params):
    """The scatter definition in float64, whatever the dtype under test."""
    as64 = (lambda a: None if a is None else np.asarray(a, dtype=np.float64))
    return testbed.conv_transpose2d(as64(x), as64(w), as64(b), backend="naive", **params)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_matches_float64_oracle(name, case, dtype):
    _, batch, c_in, c_out, size, kernel, params = case
    bias = case[0] not in ("k1s1", "op_lt_dilation")  # most with bias, some without
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias)
    copies = [None if a is None else a.copy() for a in (x, w, b)]
    y = testbed.conv_transpose2d(x, w, b, backend=name, **params)
    ref = _oracle(x, w, b, **params)
    assert isinstance(y, np.ndarray) and y.dtype == np.dtype(dtype) and y.shape == ref.shape
    assert rel_error(y, ref) < RTOL[np.dtype(dtype)]
    for before, after in zip(copies, (x, w, b)):
        assert before is None or np.array_equal(before, after), "an input was modified"


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_unbatched_input(name):
    x, w, b = call_arrays(1, 2, 3, (3, 3), (3, 3), {}, np.float64, True)
    params = dict(stride=2, padding=1, output_padding=1)
    y = testbed.conv_transpose2d(x[0], w, b, backend=name, **params)
    assert y.shape == (3, 6, 6)
    assert rel_error(y, _oracle(x, w, b, **params)[0]) < RTOL[np.dtype(np.float64)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_device_arrays_in_device_array_out(name, dtype):
    """``Backend.run`` with device arrays returns a device array (no copy back), equal to the host path."""
    impl = testbed.get_backend(name)
    problem = Problem(2, 4, (3, 3), 2, (3, 3), stride=2, padding=1, groups=2, dtype=dtype, has_bias=True)
    x, w, b = problem.random_arrays(1)
    y_dev = impl.run(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), problem)
    assert not isinstance(y_dev, np.ndarray) and hasattr(y_dev, "copy_to_host")
    y = y_dev.copy_to_host()
    assert y.shape == problem.output_shape and y.dtype == np.dtype(dtype)
    assert rel_error(y, _oracle(x, w, b, stride=2, padding=1, groups=2)) < RTOL[np.dtype(dtype)]


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_device_arrays_through_the_api(name):
    x, w, b = call_arrays(1, 2, 2, (3, 3), (2, 2), {}, np.float64, True)
    d_x = cuda.to_device(x)
    if not testbed.registry.is_device_array(d_x):
        pytest.skip(f"testbed.registry.is_device_array does not recognise {type(d_x).__name__} (the simulator's "
                    f"arrays have no __cuda_array_interface__)")
    y = testbed.conv_transpose2d(d_x, cuda.to_device(w), cuda.to_device(b), backend=name, stride=2)
    assert not isinstance(y, np.ndarray)
    assert rel_error(y.copy_to_host(), _oracle(x, w, b, stride=2)) < RTOL[np.dtype(np.float64)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_seed_blocks_are_weight_times_pixel_bitwise(name, dtype):
    """1 channel, kernel 2, stride 2: every 2×2 output block is exactly ``W · x[i, j]`` (one product, no sum);
    the atomic scatter adds that one product to 0, which is exact too."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 3, 4)).astype(dtype)
    w = rng.standard_normal((1, 1, 2, 2)).astype(dtype)
    y = testbed.conv_transpose2d(x, w, backend=name, stride=2)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(y[0, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2], w[0, 0] * x[0, 0, i, j])


@pytest.mark.parametrize("name", GATHER_BACKENDS)
def test_gather_backends_are_bitwise_repeatable(name):
    x, w, b = call_arrays(2, 4, 2, (3, 3), (3, 3), {}, np.float32, True)
    runs = [testbed.conv_transpose2d(x, w, b, backend=name, stride=2, padding=1) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("budget_elements", [1, 40])
def test_tiled_kernel_with_tap_chunks(monkeypatch, budget_elements):
    """A tiny shared-memory budget forces ``tiled_gather`` to stage the taps chunk by chunk (1×1 chunks,
    then chunks of a few taps), as it does for large dilated kernels; results must not change."""
    monkeypatch.setattr(numba_cuda, "SHARED_BYTES_BUDGET", budget_elements * 8)
    params = dict(stride=(2, 1), padding=(2, 1), dilation=(2, 3))
    x, w, b = call_arrays(1, 2, 2, (3, 2), (4, 3), params, np.float64, True)
    plan = numba_cuda.tiled_plan(Problem.from_shapes(x.shape, w.shape, **params))
    assert (plan["chunk_h"], plan["chunk_w"]) != (4, 3)
    y = testbed.conv_transpose2d(x, w, b, backend="numba_cuda_tiled", **params)
    assert rel_error(y, _oracle(x, w, b, **params)) < RTOL[np.dtype(np.float64)]


def test_output_larger_than_one_tile():
    """Several 16×16 tiles per plane, a partial last tile, and more than one block of 256 gather threads."""
    params = dict(stride=2, padding=0, output_padding=1)
    x, w, b = call_arrays(1, 1, 1, (9, 2), (2, 3), params, np.float64, True)  # output 19 × 6
    ref = _oracle(x, w, b, **params)
    for name in CUDA_BACKENDS:
        assert rel_error(testbed.conv_transpose2d(x, w, b, backend=name, **params), ref) < 1e-12, name


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_timing_helper_refuses_the_simulator_or_times_the_gpu(name):
    problem = Problem(1, 2, (4, 4), 2, (2, 2), stride=2, dtype=np.float32)
    if SIMULATED:
        assert testbed.get_backend(name).timing_kind is None
        with pytest.raises(RuntimeError, match="simulator"):
            numba_cuda.time_cuda_backend(name, problem)
    else:
        times = numba_cuda.time_cuda_backend(name, problem, repeats=3)
        assert times["kernel_ms"] > 0 and times["with_transfers_ms"] > 0
