"""``layout="NCHW" | "NHWC"`` on conv_transpose2d, output_shape, resolve_backend and Problem: validation,
shapes, ``output_size``, ``out``, the dispatcher's conversion, and the registry's declarations. Per-backend
values in NHWC are test_parity.py's (``test_nhwc_*``) and test_out.py's (``test_out_nhwc``)."""

import numpy as np
import pytest

import testbed
from testbed.problem import LAYOUTS, Problem
from testbed.registry import Backend, layout_axes, permuted
from testbed.testing import assert_close_to_oracle, call_kwargs, oracle
from testbed.wisdom import signature


def _arrays(batch=2, c_in=4, c_out=6, size=(3, 5), kernel=(2, 2), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c_in, *size))
    return x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), rng.standard_normal((c_in, c_out, *kernel))


def test_output_shape_and_problem_shapes():
    assert testbed.output_shape((1, 28, 28, 1024), (1024, 512, 2, 2), stride=2, layout="NHWC") == (1, 56, 56, 512)
    assert testbed.output_shape((5, 7, 3), (3, 2, 3, 3), stride=2, padding=1, layout="NHWC") == (9, 13, 2)
    problem = Problem(batch=2, in_channels=3, in_size=(5, 7), out_channels=4, kernel_size=2, stride=2, layout="NHWC")
    assert problem.input_shape == (2, 5, 7, 3) and problem.output_shape == (2, 10, 14, 4)
    assert problem.with_(layout="NCHW").output_shape == (2, 4, 10, 14)
    x, w, _ = problem.random_arrays(0)
    assert x.shape == (2, 5, 7, 3) and w.shape == (3, 4, 2, 2)
    assert call_kwargs(problem)["layout"] == "NHWC"
    assert LAYOUTS == ("NCHW", "NHWC")


@pytest.mark.parametrize("bad", ["nhwc", "NWHC", "", 1, "NCL", "NDHWC"])
def test_bad_layout_is_refused_naming_it(bad):
    x, _, w = _arrays()
    with pytest.raises(ValueError, match="layout must be one of"):
        testbed.conv_transpose2d(x, w, stride=2, layout=bad)
    with pytest.raises(ValueError, match="layout must be one of"):
        testbed.output_shape(x.shape, w.shape, layout=bad)
    with pytest.raises(ValueError, match="layout must be one of"):
        Problem(batch=1, in_channels=1, in_size=(2, 2), out_channels=1, kernel_size=2, layout=bad)


def test_layout_none_is_channels_first_of_the_rank():
    x, _, w = _arrays()
    default = testbed.conv_transpose2d(x, w, stride=2)
    assert np.array_equal(testbed.conv_transpose2d(x, w, stride=2, layout=None), default)
    assert Problem(batch=1, in_channels=1, in_size=(2,), out_channels=1, kernel_size=2).layout == "NCL"
    assert Problem(batch=1, in_channels=1, in_size=2, out_channels=1, kernel_size=2, rank=3).layout == "NCDHW"


def test_shapes_are_read_in_the_layout():
    x, x_nhwc, w = _arrays(c_in=4)
    with pytest.raises(ValueError, match=r"weight.shape\[0\] \(4\) must equal the input's channel count \(5\)"):
        testbed.conv_transpose2d(x, w, stride=2, layout="NHWC")  # NCHW array read as NHWC: C_in = 5
    with pytest.raises(ValueError, match=r"\(N, H, W, C_in\)"):
        testbed.conv_transpose2d(x_nhwc[0, 0], w, stride=2, layout="NHWC")


def test_output_size_full_shape_and_out_in_nhwc():
    x, x_nhwc, w = _arrays(kernel=(3, 3))
    full = testbed.output_shape(x_nhwc.shape, w.shape, stride=2, output_padding=1, layout="NHWC")
    y = testbed.conv_transpose2d(x_nhwc, w, stride=2, output_size=full, layout="NHWC", backend="col2im")
    assert y.shape == full
    assert testbed.conv_transpose2d(x_nhwc, w, stride=2, output_size=full[1:3], layout="NHWC").shape == full
    with pytest.raises(ValueError, match="out must have the output's shape"):
        testbed.conv_transpose2d(x_nhwc, w, stride=2, layout="NHWC", out=np.empty((2, 6, 7, 11)))
    out = np.empty(full)
    assert testbed.conv_transpose2d(x_nhwc, w, stride=2, output_padding=1, layout="NHWC", out=out) is out
    assert_close_to_oracle(out.transpose(0, 3, 1, 2), x, w, stride=2, output_padding=1)


def test_oracle_and_resolve_backend_take_the_layout():
    x, x_nhwc, w = _arrays()
    assert_close_to_oracle(oracle(x_nhwc, w, stride=2, layout="NHWC").transpose(0, 3, 1, 2), x, w, stride=2)
    for name in ("numba_cpu", "col2im", "auto"):
        chosen = testbed.resolve_backend(x_nhwc, w, stride=2, layout="NHWC", backend=name)
        assert chosen.name == testbed.resolve_backend(x, w, stride=2, backend=name).name


def test_backends_declare_their_layouts():
    assert testbed.get_backend("numba_cpu").layouts == ("NCHW", "NHWC")
    assert testbed.get_backend("naive").layouts == ("NCHW",)
    for name in testbed.list_backends():
        assert set(testbed.get_backend(name).layouts) <= set(LAYOUTS)
    with pytest.raises(ValueError, match="layouts must be a non-empty tuple"):
        testbed.register(Backend(name="bad_layouts", description="", run=lambda *a: None, layouts=("NWHC",)))


def test_nhwc_only_backend_gets_nchw_calls_converted():
    """The dispatcher converts in either direction: a backend that computes NHWC only serves NCHW calls."""

    def nhwc_only(x, weight, bias, problem):
        assert problem.layout == "NHWC" and x.flags.c_contiguous and x.shape == problem.input_shape
        return testbed.conv_transpose2d(
            x,
            weight,
            bias,
            backend="naive",
            layout="NHWC",
            **{k: v for k, v in call_kwargs(problem).items() if k != "layout"},
        )

    impl = Backend(name="nhwc_only", description="test double", run=nhwc_only, layouts=("NHWC",))
    x, _, w = _arrays()
    y = testbed.conv_transpose2d(x, w, stride=2, backend=impl)
    assert y.shape == (2, 6, 6, 10) and y.flags.c_contiguous
    assert_close_to_oracle(y, x, w, stride=2)
    out = np.empty_like(y)
    assert testbed.conv_transpose2d(x, w, stride=2, backend=impl, out=out) is out
    assert np.array_equal(out, y)


def test_layout_axes_and_permuted_views():
    assert layout_axes("NHWC", "NCHW") == (0, 3, 1, 2) and layout_axes("NCHW", "NHWC") == (0, 2, 3, 1)
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    view = permuted(x, layout_axes("NCHW", "NHWC"))
    assert view.shape == (1, 3, 4, 2) and np.shares_memory(view, x)


def test_wisdom_signature_names_the_layout():
    problem = Problem(batch=1, in_channels=8, in_size=4, out_channels=4, kernel_size=2, stride=2)
    assert " NCHW " in signature(problem) and " NHWC " in signature(problem.with_(layout="NHWC"))
    assert signature(problem) != signature(problem.with_(layout="NHWC"))


@pytest.mark.cudasim
def test_cuda_backends_compute_nhwc_device_arrays():
    """Device arrays in NHWC reach the CUDA kernels as strided NCHW views (no copy) and land in an NHWC out."""
    cuda_names = [n for n in testbed.list_backends() if testbed.get_backend(n).device == "cuda"]
    if not cuda_names or not all(testbed.get_backend(n).available for n in cuda_names):
        pytest.skip("no CUDA GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=1)")
    from numba import cuda

    x, x_nhwc, w = _arrays(batch=1, c_in=2, c_out=3, size=(2, 3), kernel=(3, 3))
    params = dict(stride=2, padding=1, output_padding=1)
    for name in [*cuda_names, "auto"]:
        y = testbed.conv_transpose2d(cuda.to_device(x_nhwc), cuda.to_device(w), backend=name, layout="NHWC", **params)
        host = y.copy_to_host()
        assert host.shape == (1, 4, 6, 3)
        assert_close_to_oracle(host.transpose(0, 3, 1, 2), x, w, err_msg=name, **params)
        host_result = testbed.conv_transpose2d(x_nhwc, w, backend=name, layout="NHWC", **params)
        assert_close_to_oracle(host_result.transpose(0, 3, 1, 2), x, w, err_msg=name, **params)


def test_planner_takes_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_WISDOM", str(tmp_path / "wisdom.json"))
    _, x_nhwc, w = _arrays()
    why = testbed.explain(x_nhwc, w, stride=2, layout="NHWC")
    assert " NHWC " in why.signature and " NHWC " in str(why)
    result = testbed.tune(x_nhwc, w, stride=2, layout="NHWC", candidates=["col2im", "numba_cpu"], isolation="inline")
    assert result.winner in ("col2im", "numba_cpu") and " NHWC " in result.signature
