"""``out=`` with CUDA device arrays, in numba's CUDA simulator (or on a GPU): run in its own process,
``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cudasim``."""

import numpy as np
import pytest

import testbed
from helpers import call_arrays
from testbed.testing import TOLERANCES, relative_error

pytestmark = pytest.mark.cudasim

CUDA_BACKENDS = [name for name in testbed.list_backends() if testbed.get_backend(name).device == "cuda"]
if not CUDA_BACKENDS or not all(testbed.get_backend(name).available for name in CUDA_BACKENDS):
    pytest.skip("no CUDA GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: numba.cuda is the simulator or a GPU from here on)

PARAMS = dict(stride=2, padding=1, output_padding=1, groups=2)


def _arrays(batch=2):
    x, w, b = call_arrays(batch, 4, 2, (3, 3), (3, 3), PARAMS, np.float32, bias=True)
    reference = testbed.conv_transpose2d(*(a.astype(np.float64) for a in (x, w, b)), backend="naive", **PARAMS)
    return x, w, b, reference


@pytest.mark.parametrize("name", [*CUDA_BACKENDS, "auto"])
def test_device_out_receives_the_result(name):
    x, w, b, reference = _arrays()
    out = cuda.to_device(np.full(reference.shape, np.nan, dtype=np.float32))
    result = testbed.conv_transpose2d(
        cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), backend=name, out=out, **PARAMS
    )
    assert result is out
    assert relative_error(out.copy_to_host(), reference) < TOLERANCES[np.dtype(np.float32)]


@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_unbatched_device_out_and_host_out(name):
    x, w, b, reference = _arrays(batch=1)
    out = cuda.to_device(np.full(reference.shape[1:], np.nan, dtype=np.float32))
    testbed.conv_transpose2d(
        cuda.to_device(x[0]), cuda.to_device(w), cuda.to_device(b), backend=name, out=out, **PARAMS
    )
    assert relative_error(out.copy_to_host(), reference[0]) < TOLERANCES[np.dtype(np.float32)]
    host_out = np.full(reference.shape, np.nan, dtype=np.float32)  # host arrays: copied back into out
    assert testbed.conv_transpose2d(x, w, b, backend=name, out=host_out, **PARAMS) is host_out
    assert relative_error(host_out, reference) < TOLERANCES[np.dtype(np.float32)]


def test_device_out_must_match_the_input_device_and_not_overlap():
    name = CUDA_BACKENDS[0]
    x, w, b, reference = _arrays()
    d_x, d_w, d_b = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    with pytest.raises(TypeError, match="out must be a CUDA device array"):
        testbed.conv_transpose2d(d_x, d_w, d_b, backend=name, out=np.empty(reference.shape, np.float32), **PARAMS)
    with pytest.raises(TypeError, match="out must be a NumPy array"):
        testbed.conv_transpose2d(
            x, w, b, backend=name, out=cuda.to_device(np.empty(reference.shape, np.float32)), **PARAMS
        )
    with pytest.raises(ValueError, match="out must have the output's shape"):
        testbed.conv_transpose2d(d_x, d_w, d_b, backend=name, out=cuda.device_array((1, 2), np.float32), **PARAMS)
    square = cuda.to_device(np.ones((1, 2, 3, 3), np.float32))  # k1 s1, C_in == C_out: out could be x
    with pytest.raises(ValueError, match="out must not share memory with input"):
        testbed.conv_transpose2d(square, cuda.to_device(np.ones((2, 2, 1, 1), np.float32)), backend=name, out=square)
