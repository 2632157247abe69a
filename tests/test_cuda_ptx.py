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
from testbed.backends.numba_cuda_kernels import KERNELS, TILE  # noqa: E402

CUDA_BACKENDS = [name for name in testbed.list_backends() if testbed.get_backend(name).device == "cuda"]
KERNEL_DTYPES = [(name, dtype) for name, by_dtype in KERNELS.items() for dtype in by_dtype]

needs_compiler = pytest.mark.skipif(shutil.which("ptxas") is None or numba.config.ENABLE_CUDASIM,
                                    reason="needs ptxas on PATH and the real CUDA target (simulator off)")


@needs_compiler
@pytest.mark.parametrize("name, dtype", KERNEL_DTYPES, ids=[f"{n}-{d}" for n, d in KERNEL_DTYPES])
def test_kernel_compiles_and_assembles_for_sm90_without_spills(name, dtype):
    ptx = numba_cuda_ptx.compile_kernel_ptx(name, dtype, cc=(9, 0))
    assert re.search(r"^\.target sm_90", ptx, re.MULTILINE), "PTX not generated for sm_90"
    if dtype == "float32":  # accumulators stay in the data's precision (no float64 promotion)
        assert ".f64" not in ptx, f"{name}[float32] computes in float64"
    registers, _smem, stack, spill_stores, spill_loads = numba_cuda_ptx.assemble(ptx, "sm_90")
    assert 0 < registers <= 255
    assert (stack, spill_stores, spill_loads) == (0, 0, 0), f"{name}[{dtype}] spills or uses local memory"


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


@pytest.mark.parametrize("kernel, stride, dilation, dtype", [
    ((3, 3), (1, 1), (1, 1), np.float64), ((2, 2), (2, 2), (1, 1), np.float32),
    ((7, 7), (1, 1), (9, 9), np.float64), ((5, 2), (1, 1), (25, 1), np.float64),
    ((31, 31), (1, 1), (7, 7), np.float32), ((64, 64), (1, 1), (64, 64), np.float64)])
def test_tiled_plan_fits_the_budget_and_covers_every_halo(kernel, stride, dilation, dtype):
    problem = Problem(1, 1, (3, 3), 1, kernel, stride=stride, dilation=dilation, dtype=dtype)
    plan = numba_cuda.tiled_plan(problem)
    assert plan["shared_bytes"] <= numba_cuda.SHARED_BYTES_BUDGET
    assert plan["shared_bytes"] == (plan["chunk_h"] * plan["chunk_w"] + plan["halo_h"] * plan["halo_w"]) \
        * problem.dtype.itemsize
    for axis, (chunk, halo) in enumerate(((plan["chunk_h"], plan["halo_h"]), (plan["chunk_w"], plan["halo_w"]))):
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        assert 1 <= chunk <= k
        # brute force: the input rows one TILE of outputs (starting at o0 + padding) reads through any chunk
        # of taps; shifting o0 by s shifts the rows by 1, so every residue of o0 mod s covers all tiles
        for o0 in range(2 * s):
            for lo in range(0, k, chunk):
                rows = {(o - kk * d) // s for o in range(o0, o0 + TILE) for kk in range(lo, min(lo + chunk, k))
                        if (o - kk * d) % s == 0}
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
