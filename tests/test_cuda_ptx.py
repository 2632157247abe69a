"""Real compilation of every numba.cuda kernel without a GPU: NVVM → PTX (sm_90) → ``ptxas -arch=sm_90 -v``.

Runs in the normal (non-simulator) pytest process; skipped where ptxas is absent or the simulator is on.
Also checks the host-side pieces that need no device: availability reporting and the tiled kernel's plan.
"""

import math
import re
import shutil

import numpy as np
import pytest

import testbed
from testbed.problem import Problem

numba = pytest.importorskip("numba")
from testbed.backends import numba_cuda, numba_cuda_ptx  # noqa: E402
from testbed.backends.numba_cuda_kernels import KERNELS  # noqa: E402
from testbed.backends.numba_cuda_layout import TILE  # noqa: E402

CUDA_BACKENDS = [name for name in testbed.list_backends() if testbed.get_backend(name).device == "cuda"]
KERNEL_DTYPES = [(name, dtype) for name, by_dtype in KERNELS.items() for dtype in by_dtype]

needs_compiler = pytest.mark.skipif(
    shutil.which("ptxas") is None or numba.config.ENABLE_CUDASIM,
    reason="needs ptxas on PATH and the real CUDA target (simulator off)",
)


#: Register budgets per thread at sm_90 (ptxas -v), for float32 and float64 alike. 64 registers let 4 blocks of
#: 256 threads share an SM's 64K registers (full occupancy at 256 threads). The issue asked for gather <= 64 and
#: tiled <= 128; the 32-bit kernels take 32 and 48 (float32), so both are held to 64. Before the index
#: arithmetic went 32-bit: gather 120, tiled_gather 213 (float32) / 224 (float64), scatter_atomic 44 / 46.
#: gather3d (the 3-D gather, issue 23) is held to gather's 64; it takes 40 (float32) / 42 (float64).
#: The backward gathers (issue 24) are pinned near what they take (float32 / float64): backward_data 26 / 25,
#: backward_weight 26 / 27, backward_data3d 34 / 34, backward_weight3d 32 / 34.
REGISTER_BUDGETS = {
    "gather": 64,
    "gather3d": 64,
    "tiled_gather": 64,
    "scatter_atomic": 48,
    "fill_zero": 16,
    "add_bias": 16,
    "backward_data": 32,
    "backward_data3d": 40,
    "backward_weight": 32,
    "backward_weight3d": 40,
}


def test_every_kernel_has_a_register_budget():
    assert set(REGISTER_BUDGETS) == set(KERNELS)


@needs_compiler
@pytest.mark.parametrize("name, dtype", KERNEL_DTYPES, ids=[f"{n}-{d}" for n, d in KERNEL_DTYPES])
def test_kernel_assembles_for_sm90_within_its_register_budget_without_spills(name, dtype):
    ptx = numba_cuda_ptx.compile_kernel_ptx(name, dtype, cc=(9, 0))
    assert re.search(r"^\.target sm_90", ptx, re.MULTILINE), "PTX not generated for sm_90"
    if dtype == "float32":  # accumulators stay in the data's precision (no float64 promotion)
        assert ".f64" not in ptx, f"{name}[float32] computes in float64"
    registers, _smem, stack, spill_stores, spill_loads = numba_cuda_ptx.assemble(ptx, "sm_90")
    assert 0 < registers <= REGISTER_BUDGETS[name], f"{name}[{dtype}] uses {registers} registers"
    assert (stack, spill_stores, spill_loads) == (0, 0, 0), f"{name}[{dtype}] spills or uses local memory"


@needs_compiler
@pytest.mark.parametrize(
    "name, axes",
    [
        ("gather", 2),
        ("gather3d", 3),
        ("tiled_gather", 2),
        ("scatter_atomic", 2),
        ("backward_data", 0),
        ("backward_data3d", 0),
        ("backward_weight", 0),
        ("backward_weight3d", 0),
    ],
)
def test_index_arithmetic_is_32_bit(name, axes):
    """No 64-bit integer division: the only one left is phase_taps' (residue/g)·inv mod s/g, whose product
    may pass 2³² (one ``rem.u64`` per spatial axis); the backward kernels' reach_span has none."""
    ptx = numba_cuda_ptx.compile_kernel_ptx(name, "float32")
    assert not re.search(r"\bdiv\.[su]64\b", ptx), f"{name} divides in 64 bits"
    assert len(re.findall(r"\brem\.[su]64\b", ptx)) <= axes, f"{name} takes 64-bit remainders"


@needs_compiler
def test_atomic_kernel_uses_hardware_atomics():
    for dtype, op in (("float32", "f32"), ("float64", "f64")):
        ptx = numba_cuda_ptx.compile_kernel_ptx("scatter_atomic", dtype)
        assert re.search(rf"\b(atom|red)\.global\.add\.{op}", ptx), f"no atomic {op} add in scatter_atomic"


def test_ptxas_report_parsing_rejects_garbage(tmp_path):
    if shutil.which("ptxas") is None:
        pytest.skip("ptxas not on PATH")
    with pytest.raises(RuntimeError, match="ptxas"):
        numba_cuda_ptx.assemble(".version 9.0\n.target sm_90\n.address_size 64\nthis is not ptx\n")


# ---- host side, no device -------------------------------------------------------------------------------------


def test_every_cuda_backend_is_registered_with_its_contract():
    assert set(CUDA_BACKENDS) == {"numba_cuda", "numba_cuda_atomic", "numba_cuda_tiled"}
    assert testbed.get_backend("numba_cuda_atomic").deterministic is False
    assert testbed.get_backend("numba_cuda").deterministic and testbed.get_backend("numba_cuda_tiled").deterministic


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="the simulator is on in this process")
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_without_gpu_backends_report_why_and_refuse(name):
    impl = testbed.get_backend(name)
    ok, why = impl.probe()
    if ok:
        pytest.skip(f"a CUDA GPU is present: {why}")
    assert why == numba_cuda.NO_DEVICE_STATUS and impl.timing_kind is None
    x, w = np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    with pytest.raises(testbed.BackendUnavailable, match="NUMBA_ENABLE_CUDASIM"):
        testbed.conv_transpose2d(x, w, backend=name)
    with pytest.raises(testbed.BackendUnavailable):
        numba_cuda.time_cuda_backend(name, Problem(1, 1, 2, 1, 2))


def test_timing_refuses_host_backends():
    with pytest.raises(ValueError, match="CUDA backend"):
        numba_cuda.time_cuda_backend("naive", Problem(1, 1, 2, 1, 2))


def test_timing_refuses_an_unknown_direction():
    with pytest.raises(ValueError, match=r"direction must be one of.*'sideways'"):
        numba_cuda.time_cuda_backend("numba_cuda", Problem(1, 1, 2, 1, 2), direction="sideways")


@pytest.mark.parametrize(
    "kernel, stride, dilation, dtype",
    [
        ((3, 3), (1, 1), (1, 1), np.float64),
        ((2, 2), (2, 2), (1, 1), np.float32),
        ((7, 7), (1, 1), (9, 9), np.float64),
        ((5, 2), (1, 1), (25, 1), np.float64),
        ((31, 31), (1, 1), (7, 7), np.float32),
        ((64, 64), (1, 1), (64, 64), np.float64),
    ],
)
def test_tiled_plan_fits_the_budget_and_covers_every_halo(kernel, stride, dilation, dtype):
    problem = Problem(1, 1, (3, 3), 1, kernel, stride=stride, dilation=dilation, dtype=dtype)
    plan = numba_cuda.tiled_plan(problem)
    assert plan["shared_bytes"] <= numba_cuda.SHARED_BYTES_BUDGET
    assert (
        plan["shared_bytes"]
        == (plan["chunk_h"] * plan["chunk_w"] + plan["halo_h"] * plan["halo_w"]) * problem.dtype.itemsize
    )
    for axis, (chunk, halo) in enumerate(((plan["chunk_h"], plan["halo_h"]), (plan["chunk_w"], plan["halo_w"]))):
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        assert 1 <= chunk <= k
        # brute force: the input rows one TILE of outputs (starting at o0 + padding) reads through any chunk
        # of taps; shifting o0 by s shifts the rows by 1, so every residue of o0 mod s covers all tiles
        for o0 in range(2 * s):
            for lo in range(0, k, chunk):
                rows = {
                    (o - kk * d) // s
                    for o in range(o0, o0 + TILE)
                    for kk in range(lo, min(lo + chunk, k))
                    if (o - kk * d) % s == 0
                }
                if rows:
                    assert max(rows) - min(rows) + 1 <= halo
    if kernel == (3, 3):
        assert (plan["chunk_h"], plan["chunk_w"]) == kernel  # ordinary kernels: one chunk, staged once


@pytest.mark.parametrize("stride, dilation", [(s, d) for s in range(1, 7) for d in range(1, 7)])
def test_phase_constants_give_the_first_tap(stride, dilation):
    """The closed form of numba_cuda_kernels.phase_taps: first tap kh with kh·d ≡ t (mod s)."""
    g, inverse = numba_cuda._phase_constants(stride, dilation)
    assert g == math.gcd(stride, dilation)
    for t in range(3 * stride):
        solutions = [k for k in range(stride // g) if (k * dilation - t) % stride == 0]
        if (t % stride) % g:
            assert solutions == []
        else:
            assert solutions == [((t % stride) // g * inverse) % (stride // g)]


# ---- 32-bit index limits ------------------------------------------------------------------------------------

LIMIT = numba_cuda.INDEX_LIMIT


@pytest.mark.parametrize(
    "problem, what",
    [
        (Problem(2**20, 2**11, (1, 1), 1, (1, 1)), "input elements"),  # 2³¹ inputs
        (Problem(1, 2**16, (1, 1), 2**15, (1, 1)), "weight elements"),  # 2³¹ weights
        (Problem(2**21, 1, (1, 1), 2**10, (1, 1)), "output elements"),  # 2³¹ outputs
        (Problem(2**16, 2**14, (1, 1), 2**2, (1, 1)), "atomic scatter threads"),  # 2³⁰ inputs × 4
        (Problem(1, 1, (2, 2), 1, (1, 1), stride=(2**31, 1), padding=(2**30 - 1, 0)), "index extent along H"),
        (Problem(1, 1, (1, 1), 1, (1, 1), stride=(1, 2**40)), "index extent along W"),  # stride itself too wide
        (Problem(1, 1, (1, 1), 1, (1, 2), dilation=(1, 2**30 + 1), padding=(0, 2**29)), "index extent along W"),
    ],
)
def test_problems_beyond_int32_are_declared_unsupported_with_the_size(problem, what):
    reason = numba_cuda.index_limit_reason(problem)
    assert reason is not None and what in reason and "32-bit" in reason
    for name in CUDA_BACKENDS:
        assert testbed.get_backend(name).unsupported_reason(problem) == reason


@pytest.mark.parametrize(
    "problem, what",
    [
        (Problem(1, 1, (1, 1, 1), 1, (1, 1, 1), stride=(2**31, 1, 1)), "index extent along D"),
        (Problem(1, 1, (1,), 1, (2,), dilation=2**31, padding=2**30), "index extent along L"),  # L_out = 1
        (Problem(2**11, 2**10, (2**5, 2**5), 1, (1, 1), layout="NHWC"), "input elements"),
        (Problem(1, 2**10, (2**7,) * 3, 1, (1, 1, 1), layout="NDHWC"), "input elements"),
    ],
)
def test_1d_and_3d_problems_beyond_int32_are_declared_unsupported(problem, what):
    reason = numba_cuda.index_limit_reason(problem)
    assert reason is not None and what in reason and "32-bit" in reason
    assert testbed.get_backend("numba_cuda").unsupported_reason(problem) == reason


@pytest.mark.parametrize(
    "problem",
    [
        Problem(2, 3, (7,), 4, (3,), stride=2, padding=1, output_padding=1, dilation=2, groups=1, layout="NLC"),
        Problem(1, 4, (2, 3, 5), 2, (2, 1, 3), stride=(1, 2, 3), padding=(0, 1, 2), dilation=(2, 1, 1), groups=2),
    ],
)
def test_as_rank_adds_unit_axes_with_the_same_output_and_arrays(problem):
    """The lifted problem has one unit axis more or two in front: the same element counts, shapes with 1s
    inserted after the channels (channels first) or after the batch (channels last), the same flops."""
    for rank in range(problem.rank, 4):
        lifted = numba_cuda.as_rank(problem, rank)
        units = (1,) * (rank - problem.rank)
        assert lifted.rank == rank and lifted.channels_last == problem.channels_last
        assert lifted.out_size == units + problem.out_size and lifted.flops == problem.flops
        for shape in ("input_shape", "weight_shape", "output_shape"):
            assert math.prod(getattr(lifted, shape)) == math.prod(getattr(problem, shape))
        inserted_at = 1 if problem.channels_last else 2
        assert lifted.output_shape == (problem.output_shape[:inserted_at] + units + problem.output_shape[inserted_at:])
    with pytest.raises(ValueError, match="rank must be at least"):
        numba_cuda.as_rank(problem, problem.rank - 1)


def test_problems_at_the_int32_limit_are_supported():
    slack = numba_cuda.THREADS_PER_BLOCK
    assert numba_cuda.index_limit_reason(Problem(LIMIT - slack, 1, (1, 1), 1, (1, 1))) is None
    # H: H_out + 2·padding + stride + dilation + TILE = 1 + 2·p + 2·(p + 1) + 1 + 16 = 4p + 20
    p = (LIMIT - 20) // 4
    assert (
        numba_cuda.index_limit_reason(
            Problem(1, 1, (2, 2), 1, (1, 1), stride=(2 * p + 2, 1), padding=(p, 0), output_padding=(1, 0))
        )
        is None
    )


def test_the_api_refuses_before_the_kernels_run():
    """Declared unsupported (not unavailable): the check runs before any device is needed."""
    x, w = np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1))
    for name in CUDA_BACKENDS:
        with pytest.raises(testbed.UnsupportedConfiguration, match="32-bit index range"):
            testbed.conv_transpose2d(x, w, backend=name, stride=2**31, padding=2**30 - 1)


def _phase_taps_by_definition(shifted, stride, dilation, kernel, in_len):
    taps = [
        (k, (shifted - k * dilation) // stride)
        for k in range(kernel)
        if shifted >= k * dilation
        and (shifted - k * dilation) % stride == 0
        and (shifted - k * dilation) // stride < in_len
    ]
    return taps


def _phase_taps(shifted, stride, dilation, kernel, in_len):
    """``numba_cuda_kernels.phase_taps`` run as Python on numpy uint32 scalars (so that a wrap-around
    raises) and expanded to its ``(tap, input index)`` list."""
    from testbed.backends.numba_cuda_kernels import phase_taps

    gcd, inverse = numba_cuda._phase_constants(stride, dilation)
    with np.errstate(over="raise"):
        first, index, count = phase_taps.py_func(
            *(np.uint32(v) for v in (shifted, stride, dilation, gcd, inverse, kernel, in_len))
        )
    tap_step, in_step = stride // gcd, dilation // gcd
    return [(int(first) + j * tap_step, int(index) - j * in_step) for j in range(int(count))]


@pytest.mark.parametrize("stride, dilation", [(s, d) for s in range(1, 6) for d in range(1, 6)])
def test_phase_taps_visits_exactly_the_taps_of_the_definition(stride, dilation):
    for kernel in (1, 2, 3, 5):
        for in_len in (1, 2, 4):
            for shifted in range((in_len + 1) * stride + kernel * dilation):
                expected = _phase_taps_by_definition(shifted, stride, dilation, kernel, in_len)
                assert _phase_taps(shifted, stride, dilation, kernel, in_len) == expected, (
                    shifted,
                    stride,
                    dilation,
                    kernel,
                    in_len,
                )


@pytest.mark.parametrize(
    "stride, dilation, kernel, in_len",
    [
        (2**28 + 1, 2**28, 2, 2),  # (s/g)² ≈ 2⁵⁶: the first-tap product needs its 64 bits
        (46_349, 46_341, 3, 3),
        (3, 2**29, 3, 2**20),
        (2**29, 1, 2**20, 3),
    ],
)
def test_phase_taps_near_the_int32_limit(stride, dilation, kernel, in_len):
    extent = (in_len - 1) * stride + (kernel - 1) * dilation + 1
    assert extent + stride + dilation + 16 <= LIMIT
    rng = np.random.default_rng(0)
    probes = {0, extent - 1, stride, dilation, stride + dilation, *rng.integers(0, extent, 200).tolist()}
    for shifted in sorted(probes):
        expected = _phase_taps_by_definition(shifted, stride, dilation, kernel, in_len) if kernel < 100 else None
        got = _phase_taps(shifted, stride, dilation, kernel, in_len)
        if expected is not None:
            assert got == expected, shifted
        assert all(0 <= k < kernel and 0 <= i < in_len and k * dilation + i * stride == shifted for k, i in got)


# ---- the simulator suite fails rather than skips when the simulator is asked for ---------------------------------

_RUN_SIM_SUITE_WITH_BROKEN_BACKENDS = """
import dataclasses, sys
import pytest, testbed
from testbed import registry
for name in testbed.list_backends():
    impl = registry.get_backend(name)
    if impl.device == "cuda":
        registry._REGISTRY[name] = dataclasses.replace(impl, probe=lambda: (False, "broken on purpose"))
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-m", "cudasim", "tests/test_cuda_sim.py"]))
"""


def test_simulator_suite_fails_when_the_simulator_is_asked_for_but_unusable():
    """``NUMBA_ENABLE_CUDASIM=1`` with the CUDA backends unavailable: the suite errors at collection (pytest
    exit code 2), never 'all skipped'. (Simulator off and no GPU, it skips: this process collects it so.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _RUN_SIM_SUITE_WITH_BROKEN_BACKENDS],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "NUMBA_ENABLE_CUDASIM='1' is set" in output and "broken on purpose" in output, output
