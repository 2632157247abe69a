"""The numba.cuda backends against the float64 ``naive`` oracle, in numba's CUDA simulator (or on a GPU).

Run in its own process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cudasim`` (``make test-cudasim``).
The simulator runs one Python thread per CUDA thread, so every shape here is tiny (outputs of a few hundred
elements). The same tests run unchanged on a real GPU.

With ``NUMBA_ENABLE_CUDASIM`` set, this module never skips: a simulator that does not come up (backends
unavailable or unregistered, an import error) fails the run at collection, so ``make test-cudasim`` cannot
pass with zero tests. Without it, the module skips only where no CUDA GPU is usable.
"""

import itertools
import os

import numpy as np
import pytest

import testbed
from helpers import call_arrays
from testbed.problem import Problem
from testbed.testing import TOLERANCES, relative_error

pytestmark = pytest.mark.cudasim

SIMULATOR_REQUESTED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")
CUDA_BACKENDS = [name for name in testbed.list_backends() if testbed.get_backend(name).device == "cuda"]
_UNUSABLE = {
    name: testbed.get_backend(name).status for name in CUDA_BACKENDS if not testbed.get_backend(name).available
}
if not CUDA_BACKENDS:
    raise RuntimeError("no CUDA backend is registered (testbed.backends.numba_cuda did not register)")
if _UNUSABLE and SIMULATOR_REQUESTED:
    raise RuntimeError(
        f"NUMBA_ENABLE_CUDASIM={os.environ['NUMBA_ENABLE_CUDASIM']!r} is set but the CUDA backends "
        f"cannot run: {_UNUSABLE}"
    )
if _UNUSABLE:
    pytest.skip(
        f"the CUDA simulator is off (set NUMBA_ENABLE_CUDASIM=1) and no CUDA GPU is usable: {_UNUSABLE}",
        allow_module_level=True,
    )

from numba import cuda  # noqa: E402  (after the checks: numba.cuda is the simulator or a GPU from here on)

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

    def as64(a):
        return None if a is None else np.asarray(a, dtype=np.float64)

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
    assert relative_error(y, ref) < TOLERANCES[np.dtype(dtype)]
    for before, after in zip(copies, (x, w, b)):
        assert before is None or np.array_equal(before, after), "an input was modified"


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_unbatched_input(name):
    x, w, b = call_arrays(1, 2, 3, (3, 3), (3, 3), {}, np.float64, True)
    params = dict(stride=2, padding=1, output_padding=1)
    y = testbed.conv_transpose2d(x[0], w, b, backend=name, **params)
    assert y.shape == (3, 6, 6)
    assert relative_error(y, _oracle(x, w, b, **params)[0]) < TOLERANCES[np.dtype(np.float64)]


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
    assert relative_error(y, _oracle(x, w, b, stride=2, padding=1, groups=2)) < TOLERANCES[np.dtype(dtype)]


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_device_arrays_through_the_api(name):
    x, w, b = call_arrays(1, 2, 2, (3, 3), (2, 2), {}, np.float64, True)
    d_x = cuda.to_device(x)
    assert testbed.registry.is_device_array(d_x), (
        f"testbed.registry.is_device_array does not recognise {type(d_x).__module__}.{type(d_x).__name__}"
    )
    y = testbed.conv_transpose2d(d_x, cuda.to_device(w), cuda.to_device(b), backend=name, stride=2)
    assert not isinstance(y, np.ndarray)
    assert relative_error(y.copy_to_host(), _oracle(x, w, b, stride=2)) < TOLERANCES[np.dtype(np.float64)]


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_strided_device_arrays(name):
    """Non-contiguous device arrays (a sliced tensor through ``__cuda_array_interface__``, say) are copied
    to contiguous ones on the device, as the kernels index flat arrays; the inputs stay as they were."""
    x, w, b = call_arrays(1, 2, 2, (3, 4), (2, 3), {}, np.float64, True)
    x_wide, w_wide = np.zeros((1, 2, 3, 8)), np.zeros((2, 2, 2, 6))
    x_wide[:, :, :, ::2], w_wide[:, :, :, ::2] = x, w
    d_x, d_w = cuda.to_device(x_wide)[:, :, :, ::2], cuda.to_device(w_wide)[:, :, :, ::2]
    assert not d_x.is_c_contiguous() and not d_w.is_c_contiguous()
    y = testbed.conv_transpose2d(d_x, d_w, cuda.to_device(b), backend=name, stride=2, padding=1)
    assert relative_error(y.copy_to_host(), _oracle(x, w, b, stride=2, padding=1)) < TOLERANCES[np.dtype(np.float64)]
    np.testing.assert_array_equal(d_x.copy_to_host(), x)


@pytest.mark.parametrize("bias", [None, 0.0, -0.0], ids=["no_bias", "bias+0", "bias-0"])
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_signed_zeros_as_pytorch(name, bias):
    """Every product -0.0 (negative inputs × +0 weights, -0 inputs × positive weights), outputs that no tap
    reaches (stride 3 > kernel 2), a bias of +0, -0 or none: PyTorch's CPU kernels sum from +0 and add the
    bias last, and so must every CUDA backend (the atomic one once filled the output with the bias first,
    giving -0.0 where PyTorch gives +0.0)."""
    torch = pytest.importorskip("torch")
    dtype = np.float32
    x = np.full((1, 2, 3, 3), -1.0, dtype=dtype)
    x[:, 1] = -0.0
    w = np.zeros((2, 1, 2, 2), dtype=dtype)
    w[1] = 2.0
    b = None if bias is None else np.full(1, bias, dtype=dtype)
    params = dict(stride=3, padding=1)
    y = testbed.conv_transpose2d(x, w, b, backend=name, **params)
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b), **params
    ).numpy()
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))


def _by_definition(x, w, b, stride, padding, dilation, out_size):
    """``y[n, co, ih·s - p + kh·d, iw·s - p + kw·d] += x[n, ci, ih, iw] · W[ci, co, kh, kw]`` (groups 1),
    looping over the taps only: no canvas, so any stride or padding."""
    y = np.zeros((x.shape[0], w.shape[1], *out_size))
    for ih, iw, kh, kw in np.ndindex(x.shape[2], x.shape[3], w.shape[2], w.shape[3]):
        oh = ih * stride[0] - padding[0] + kh * dilation[0]
        ow = iw * stride[1] - padding[1] + kw * dilation[1]
        if 0 <= oh < out_size[0] and 0 <= ow < out_size[1]:
            y[:, :, oh, ow] += x[:, :, ih, iw] @ w[:, :, kh, kw]
    return y + b[None, :, None, None]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a uint32 wrap-around in a simulated thread
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_index_extents_near_the_int32_limit(name):
    """Stride and dilation near 2²⁸ (extent H_out + 2·padding + stride + dilation ≈ 2³⁰) with a 4-row
    output: the outputs the two taps reach (rows 1 and 2), the 64-bit first-tap product ((s/g)² ≈ 2⁵⁶)."""
    params = dict(stride=(2**28 + 1, 2), padding=(2**28 - 1, 1), dilation=(2**28, 1))
    x, w, b = call_arrays(1, 2, 2, (2, 3), (2, 3), {}, np.float64, True)
    problem = Problem.from_shapes(x.shape, w.shape, has_bias=True, **params)
    assert problem.out_size == (4, 5) and numba_cuda.index_limit_reason(problem) is None
    expected = _by_definition(x, w, b, params["stride"], params["padding"], params["dilation"], problem.out_size)
    assert np.count_nonzero(expected[:, :, 1:3] - b[None, :, None, None]) == 2 * 2 * 5  # taps do land
    y = testbed.conv_transpose2d(x, w, b, backend=name, **params)
    assert relative_error(y, expected) < TOLERANCES[np.dtype(np.float64)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_seed_blocks_are_weight_times_pixel_bitwise(name, dtype):
    """1 channel, kernel 2, stride 2: every 2×2 output block is exactly ``W · x[i, j]`` (one product, no sum);
    the atomic scatter adds that one product to the zero-filled output, which is exact too."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 3, 4)).astype(dtype)
    w = rng.standard_normal((1, 1, 2, 2)).astype(dtype)
    y = testbed.conv_transpose2d(x, w, backend=name, stride=2)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(y[0, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2], w[0, 0] * x[0, 0, i, j])


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
    assert relative_error(y, _oracle(x, w, b, **params)) < TOLERANCES[np.dtype(np.float64)]


def test_output_larger_than_one_tile():
    """Several 16×16 tiles per plane, a partial last tile, and more than one block of 256 gather threads."""
    params = dict(stride=2, padding=0, output_padding=1)
    x, w, b = call_arrays(1, 1, 1, (9, 2), (2, 3), params, np.float64, True)  # output 19 × 6
    ref = _oracle(x, w, b, **params)
    for name in CUDA_BACKENDS:
        assert relative_error(testbed.conv_transpose2d(x, w, b, backend=name, **params), ref) < 1e-12, name


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


# ---- 1-D and 3-D (issue 23) -----------------------------------------------------------------------------------

CONV_BY_RANK = {1: testbed.conv_transpose1d, 3: testbed.conv_transpose3d}

# (name, batch, C_in, C_out, in_size, kernel, params): odd sizes, parameters that differ per axis, groups, a
# stride and dilation with a common factor (outputs no tap reaches: bias only), an output over several blocks
RANK_CASES = {
    1: [
        ("k3s2p1op1_groups", 2, 4, 6, (5,), (3,), dict(stride=2, padding=1, output_padding=1, groups=2)),
        ("gcd_stride_dilation", 1, 3, 2, (3,), (3,), dict(stride=4, padding=2, output_padding=1, dilation=6)),
    ],
    3: [
        (
            "overlapping_asym_groups",  # up to 3 depth × 2 row taps per output; 4 × 3×4×9 outputs: two blocks
            1,
            4,
            4,
            (3, 3, 3),
            (3, 2, 2),
            dict(stride=(1, 1, 3), padding=(1, 1, 1), output_padding=(0, 1, 2), dilation=(1, 2, 2), groups=2),
        ),
        ("gcd_depth", 2, 1, 2, (3, 1, 2), (3, 1, 2), dict(stride=(4, 1, 2), padding=(2, 0, 1), dilation=(6, 1, 1))),
    ],
}
RANK_BACKEND_CASES = [
    (name, rank, case)
    for name in CUDA_BACKENDS
    for rank, cases in RANK_CASES.items()
    if rank in testbed.get_backend(name).ranks
    for case in cases
]
RANK_BACKENDS = sorted({(name, rank) for name, rank, _ in RANK_BACKEND_CASES})
DECLINED_RANKS = [(name, rank) for name in CUDA_BACKENDS for rank in (1, 3) if (name, rank) not in RANK_BACKENDS]


def _oracle_rank(rank, x, w, b, **params):
    """The float64 scatter definition at ``rank``, channels first."""

    def as64(a):
        return None if a is None else np.asarray(a, dtype=np.float64)

    return CONV_BY_RANK[rank](as64(x), as64(w), as64(b), backend="naive", **params)


def _channels_last(array):
    return np.ascontiguousarray(np.moveaxis(array, 1, -1))


def test_ranks_are_declared():
    """numba_cuda computes every rank; the atomic scatter 1-D (as 2-D with one row) and 2-D; tiled 2-D only."""
    assert {name: testbed.get_backend(name).ranks for name in CUDA_BACKENDS} == {
        "numba_cuda": (1, 2, 3),
        "numba_cuda_atomic": (1, 2),
        "numba_cuda_tiled": (2,),
    }


# each dtype and each layout per case, not every pair: the layout conversion is the same for both dtypes (and
# test_ranks_out_host_and_device runs float32 in both layouts), and every simulated call costs
@pytest.mark.parametrize(
    "dtype, channels_last",
    [(np.float64, False), (np.float32, True)],
    ids=["float64-channels_first", "float32-channels_last"],
)
@pytest.mark.parametrize(
    "name, rank, case", RANK_BACKEND_CASES, ids=[f"{n}-{r}d-{c[0]}" for n, r, c in RANK_BACKEND_CASES]
)
def test_ranks_match_float64_oracle(name, rank, case, dtype, channels_last):
    _, batch, c_in, c_out, size, kernel, params = case
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias=True)
    ref = _oracle_rank(rank, x, w, b, **params)
    layout = testbed.problem.LAYOUTS_BY_RANK[rank][channels_last]
    if channels_last:
        x, ref = _channels_last(x), _channels_last(ref)
    y = CONV_BY_RANK[rank](x, w, b, backend=name, layout=layout, **params)
    assert isinstance(y, np.ndarray) and y.dtype == np.dtype(dtype) and y.shape == ref.shape
    assert relative_error(y, ref) < TOLERANCES[np.dtype(dtype)]


@pytest.mark.parametrize("name, rank", RANK_BACKENDS)
def test_ranks_batch_zero_and_unbatched(name, rank):
    _, _, c_in, c_out, size, kernel, params = RANK_CASES[rank][0]
    x, w, b = call_arrays(1, c_in, c_out, size, kernel, params, np.float64, bias=True)
    ref = _oracle_rank(rank, x, w, b, **params)
    empty = CONV_BY_RANK[rank](x[:0], w, b, backend=name, **params)
    assert empty.shape == (0, *ref.shape[1:]) and empty.dtype == np.float64
    y = CONV_BY_RANK[rank](x[0], w, b, backend=name, **params)
    assert y.shape == ref.shape[1:]
    assert relative_error(y, ref[0]) < TOLERANCES[np.dtype(np.float64)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
@pytest.mark.parametrize("name, rank", RANK_BACKENDS)
def test_ranks_out_host_and_device(name, rank, channels_last):
    """``out=`` a host array (from host arrays) and a device array (from device arrays, which channels last
    reach the kernels as strided views: copied to C order on the device, the result copied into ``out``)."""
    _, batch, c_in, c_out, size, kernel, params = RANK_CASES[rank][0]
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, np.float32, bias=True)
    ref = _oracle_rank(rank, x, w, b, **params)
    layout = testbed.problem.LAYOUTS_BY_RANK[rank][channels_last]
    if channels_last:
        x, ref = _channels_last(x), _channels_last(ref)
    conv = CONV_BY_RANK[rank]
    host_out = np.full(ref.shape, np.nan, dtype=np.float32)
    assert conv(x, w, b, backend=name, layout=layout, out=host_out, **params) is host_out
    assert relative_error(host_out, ref) < TOLERANCES[np.dtype(np.float32)]
    device_out = cuda.to_device(np.full(ref.shape, np.nan, dtype=np.float32))
    d_x = cuda.to_device(x)
    result = conv(d_x, cuda.to_device(w), cuda.to_device(b), backend=name, layout=layout, out=device_out, **params)
    assert result is device_out
    assert relative_error(device_out.copy_to_host(), ref) < TOLERANCES[np.dtype(np.float32)]
    np.testing.assert_array_equal(d_x.copy_to_host(), x)


def test_ranks_reduce_bitwise_to_the_2d_kernel():
    """1-D is the 2-D gather on one row, and ``gather3d`` with one depth tap sums in ``gather``'s order
    (channels, then columns, then rows): both equal the 2-D call bit for bit, and repeat bitwise."""
    x, w, b = call_arrays(1, 4, 2, (1, 5), (1, 3), dict(groups=2), np.float32, bias=True)
    row_params = dict(stride=2, padding=1, output_padding=1, dilation=2, groups=2)
    plane_params = dict(stride=(1, 2), padding=(0, 1), output_padding=(0, 1), dilation=(1, 2), groups=2)
    depth_params = dict(stride=(1, 1, 2), padding=(0, 0, 1), output_padding=(0, 0, 1), dilation=(1, 1, 2), groups=2)
    plane = testbed.conv_transpose2d(x, w, b, backend="numba_cuda", **plane_params)
    row = testbed.conv_transpose1d(x[:, :, 0], w[:, :, 0], b, backend="numba_cuda", **row_params)
    np.testing.assert_array_equal(row, plane[:, :, 0])
    runs = [
        testbed.conv_transpose3d(x[:, :, None], w[:, :, None], b, backend="numba_cuda", **depth_params) for _ in "ab"
    ]
    np.testing.assert_array_equal(runs[0][:, :, 0], plane)
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("name, rank", DECLINED_RANKS)
def test_declined_ranks_are_refused_naming_the_rank(name, rank):
    _, batch, c_in, c_out, size, kernel, params = RANK_CASES[rank][0]
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, np.float32, bias=True)
    with pytest.raises(
        testbed.UnsupportedConfiguration, match=f"{rank}-D transposed convolution not supported"
    ) as info:
        CONV_BY_RANK[rank](x, w, b, backend=name, **params)
    assert info.value.backend == name


@pytest.mark.parametrize("rank", [1, 3])
def test_auto_computes_device_arrays_of_every_rank_on_the_gpu(rank):
    """Device arrays of rank 1 and 3 stay on the device: ``auto`` picks ``numba_cuda`` (the one CUDA backend
    of every rank) and returns a device array."""
    _, batch, c_in, c_out, size, kernel, params = RANK_CASES[rank][0]
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, np.float64, bias=True)
    d_x, d_w, d_b = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    assert testbed.resolve_backend(d_x, d_w, d_b, **params).name == "numba_cuda"
    y = CONV_BY_RANK[rank](d_x, d_w, d_b, **params)
    assert not isinstance(y, np.ndarray)
    assert relative_error(y.copy_to_host(), _oracle_rank(rank, x, w, b, **params)) < TOLERANCES[np.dtype(np.float64)]


def test_timing_helper_times_channels_last_problems_through_the_layout_conversion(monkeypatch):
    """``time_cuda_backend`` calls the backend as the API does (``compute``): the kernels receive the
    channels-first problem, never channels-last arrays under a channels-last problem they would misread. The
    simulator's events stand in for a GPU's (its times mean nothing; only the calls are checked)."""
    import dataclasses

    if SIMULATED:  # the simulator's events take no ``timing`` argument
        event = cuda.event
        monkeypatch.setattr(cuda, "event", lambda timing=False: event())
    impl = testbed.get_backend("numba_cuda")
    seen = []

    def recording_run(x, weight, bias, problem, out=None):
        seen.append(problem.layout)
        return impl.run(x, weight, bias, problem, out=out)

    pretend_gpu = dataclasses.replace(impl, run=recording_run, probe=lambda: (True, "available (pretend GPU)"))
    problem = Problem(1, 2, (2, 1, 3), 2, (2, 1, 2), stride=2, layout="NDHWC", dtype=np.float32)
    times = numba_cuda.time_cuda_backend(pretend_gpu, problem, repeats=1)
    assert set(times) == {"kernel_ms", "with_transfers_ms"}
    assert seen == ["NCDHW"] * 4  # warm-up and one timed call, device arrays then host arrays


# ---- backward (issue 24) ----------------------------------------------------------------------------------------

BACKWARD_BACKENDS = [name for name in CUDA_BACKENDS if len(testbed.get_backend(name).directions) > 1]

# (name, batch, C_in, C_out, in_size, kernel, params): tiny odd shapes at every rank; groups, dilation, output
# padding, asymmetric parameters, and padding that crops whole taps and inputs (gradients of +0 by no tap)
BACKWARD_CASES = [
    ("1d_groups_dil_op", 2, 4, 2, (5,), (3,), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)),
    ("2d_asym_groups", 1, 4, 6, (3, 4), (3, 2), dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2)),
    ("2d_crop_dilated", 2, 2, 3, (3, 3), (2, 3), dict(stride=3, padding=(3, 2), output_padding=(0, 2), dilation=2)),
    (
        "3d_asym_groups",
        2,
        2,
        4,
        (3, 2, 3),
        (2, 1, 2),
        dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 2), dilation=(2, 1, 1), groups=2),
    ),
]


def _backward_arrays(case, dtype, seed=0):
    """``(grad_output, x, w, params)`` of a case, channels first, standard normal."""
    _, batch, c_in, c_out, size, kernel, params = case
    x, w, _ = call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias=False, seed=seed)
    shape = testbed.output_shape(x.shape, w.shape, **params)
    grad_output = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    return grad_output, x, w, params


def _naive_backward(grad_output, x, w, params):
    """The float64 oracle's three gradients, channels first."""
    return testbed.conv_transpose_backward(
        *(np.asarray(a, dtype=np.float64) for a in (grad_output, x, w)), **params, backend="naive"
    )


def test_backward_is_declared_by_numba_cuda_only():
    assert {name: testbed.get_backend(name).directions for name in CUDA_BACKENDS} == {
        "numba_cuda": ("forward", "backward_data", "backward_weight"),
        "numba_cuda_atomic": ("forward",),
        "numba_cuda_tiled": ("forward",),
    }


@pytest.mark.parametrize(
    "dtype, channels_last",
    [(np.float64, False), (np.float32, True)],
    ids=["float64-channels_first", "float32-channels_last"],
)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
@pytest.mark.parametrize("name", BACKWARD_BACKENDS)
def test_backward_matches_float64_naive(name, case, dtype, channels_last):
    grad_output, x, w, params = _backward_arrays(case, dtype)
    expected = _naive_backward(grad_output, x, w, params)
    rank = w.ndim - 2
    layout = testbed.problem.LAYOUTS_BY_RANK[rank][channels_last]
    if channels_last:
        grad_output, x = _channels_last(grad_output), _channels_last(x)
    copies = [a.copy() for a in (grad_output, x, w)]
    got = testbed.conv_transpose_backward(grad_output, x, w, **params, backend=name, layout=layout)
    grad_input = np.moveaxis(got.grad_input, -1, 1) if channels_last else got.grad_input
    for actual, desired in zip((grad_input, got.grad_weight, got.grad_bias), expected):
        assert isinstance(actual, np.ndarray) and actual.dtype == np.dtype(dtype) and actual.shape == desired.shape
        assert relative_error(actual, desired) < TOLERANCES[np.dtype(dtype)]
    for before, after in zip(copies, (grad_output, x, w)):
        np.testing.assert_array_equal(before, after)  # arguments untouched


def test_backward_cropped_inputs_get_exact_zeros():
    """Stride 3, kernel rows 2 at dilation 2, padding 3, 3 output rows: input rows 0 (canvas rows 0, 2) and 2
    (rows 6, 8) land only in the cropped border, so their data gradient is +0.0 exactly (no tap: ``reach_span``
    is empty), never a -0.0 or a stray read; row 1 gets sums, as the oracle's."""
    grad_output, x, w, params = _backward_arrays(BACKWARD_CASES[2], np.float64)
    grad_input = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="numba_cuda").grad_input
    assert grad_output.shape[2] == 3
    for row in (0, 2):
        assert not grad_input[:, :, row].any() and not np.signbit(grad_input[:, :, row]).any()
    assert np.count_nonzero(grad_input[:, :, 1]) == grad_input[:, :, 1].size
    np.testing.assert_allclose(grad_input, _naive_backward(grad_output, x, w, params).grad_input, rtol=1e-12)


@pytest.mark.parametrize("mask", list(itertools.product([False, True], repeat=3)), ids=str)
def test_backward_output_mask(mask):
    """Each combination computes what it asks for, the same bits as the full call (the same kernels), and
    None for the rest."""
    grad_output, x, w, params = _backward_arrays(BACKWARD_CASES[1], np.float32)
    full = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="numba_cuda")
    got = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="numba_cuda", output_mask=mask)
    for wanted, actual, reference in zip(mask, got, full):
        if wanted:
            np.testing.assert_array_equal(actual, reference)
        else:
            assert actual is None


@pytest.mark.parametrize("case", [BACKWARD_CASES[1], BACKWARD_CASES[3]], ids=["2d", "3d"])
def test_backward_is_bitwise_repeatable(case):
    grad_output, x, w, params = _backward_arrays(case, np.float32)
    runs = [testbed.conv_transpose_backward(grad_output, x, w, **params, backend="numba_cuda") for _ in "ab"]
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


def test_backward_1d_is_the_2d_kernels_on_one_row_bitwise():
    """A 1-D problem runs as the 2-D problem with one row (``as_rank``): the same gradients bit for bit."""
    grad_output, x, w, params = _backward_arrays(BACKWARD_CASES[0], np.float32)
    row = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="numba_cuda")
    plane_params = {key: value if key == "groups" else (int(key == "stride"), value) for key, value in params.items()}
    plane_params["padding"], plane_params["output_padding"] = (0, params["padding"]), (0, params["output_padding"])
    plane_params["dilation"] = (1, params["dilation"])
    plane = testbed.conv_transpose_backward(
        grad_output[:, :, None], x[:, :, None], w[:, :, None], **plane_params, backend="numba_cuda"
    )
    np.testing.assert_array_equal(row.grad_input, plane.grad_input[:, :, 0])
    np.testing.assert_array_equal(row.grad_weight, plane.grad_weight[:, :, 0])


@pytest.mark.parametrize("case", [BACKWARD_CASES[0], BACKWARD_CASES[3]], ids=["1d", "3d"])
def test_backward_device_arrays_in_device_array_out(case):
    """``Backend.backward_data`` / ``backward_weight`` called with device arrays (``conv_transpose_backward``
    itself takes host arrays) return device arrays, equal to the host path."""
    grad_output, x, w, params = _backward_arrays(case, np.float64)
    impl = testbed.get_backend("numba_cuda")
    problem = Problem.from_shapes(x.shape, w.shape, dtype=x.dtype, **params)
    expected = _naive_backward(grad_output, x, w, params)
    d_go = cuda.to_device(grad_output)
    for direction, operand, reference in (("backward_data", w, expected[0]), ("backward_weight", x, expected[1])):
        result = getattr(impl, direction)(d_go, cuda.to_device(operand), problem)
        assert not isinstance(result, np.ndarray) and hasattr(result, "copy_to_host"), direction
        assert relative_error(result.copy_to_host(), reference) < TOLERANCES[np.dtype(np.float64)], direction


@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
def test_timing_helper_times_a_backward_direction_on_native_arrays(monkeypatch, direction):
    """``time_cuda_backend(..., direction=)`` calls the backend's gradient function on channels-first arrays of
    the native problem: device arrays (warm-up and one timed call), then host arrays. The simulator's events
    stand in for a GPU's (its times mean nothing; only the calls are checked)."""
    import dataclasses

    if SIMULATED:  # the simulator's events take no ``timing`` argument
        event = cuda.event
        monkeypatch.setattr(cuda, "event", lambda timing=False: event())
    impl = testbed.get_backend("numba_cuda")
    seen = []

    def recording(grad_output, operand, problem):
        seen.append((problem.layout, isinstance(grad_output, np.ndarray), tuple(grad_output.shape), operand.shape))
        return getattr(impl, direction)(grad_output, operand, problem)

    pretend_gpu = dataclasses.replace(impl, probe=lambda: (True, "available (pretend GPU)"), **{direction: recording})
    problem = Problem(1, 2, (2, 1, 3), 2, (2, 1, 2), stride=2, layout="NDHWC", dtype=np.float32)
    times = numba_cuda.time_cuda_backend(pretend_gpu, problem, repeats=1, direction=direction)
    assert set(times) == {"kernel_ms", "with_transfers_ms"}
    native = problem.with_(layout="NCDHW")
    operand = native.weight_shape if direction == "backward_data" else native.input_shape
    assert seen == [("NCDHW", on_host, native.output_shape, operand) for on_host in (False, False, True, True)]


def test_time_backend_times_a_gpu_backward_direction_with_cuda_events(monkeypatch):
    """``testbed.timing.time_backend(..., direction=)`` of a GPU backend hands the direction to the module's
    ``time_cuda_backend`` hook (device-resident kernel time, CUDA events), as for the forward. A pretend GPU
    stands in for the simulator (whose times mean nothing; only the route is checked)."""
    import dataclasses

    from testbed import registry, timing

    if SIMULATED:
        event = cuda.event
        monkeypatch.setattr(cuda, "event", lambda timing=False: event())
    impl = testbed.get_backend("numba_cuda")
    calls = []

    def recording(grad_output, x, problem):
        calls.append(isinstance(grad_output, np.ndarray))
        return impl.backward_weight(grad_output, x, problem)

    pretend_gpu = dataclasses.replace(impl, probe=lambda: (True, "available (pretend GPU)"), backward_weight=recording)
    monkeypatch.setitem(registry._REGISTRY, "numba_cuda", pretend_gpu)
    problem = Problem(1, 2, (3,), 2, (2,), stride=2, dtype=np.float32)
    x, w, b = problem.random_arrays(0)
    settings = timing.TimingSettings(min_repeats=1, max_repeats=1)
    stats = timing.time_backend("numba_cuda", problem, x, w, b, settings, direction="backward_weight")
    assert stats["timing_method"].startswith("cuda events"), stats
    assert {"median_s", "with_transfers_s"} <= set(stats)  # the simulator's events time nothing (-1 ms)
    assert False in calls and True in calls  # device-resident arrays and host arrays both timed
