"""``numba_cpu``: each of its paths is taken where expected and agrees with the float64 oracle (float64 and
float32) and with ``torch`` (float32); results are bitwise repeatable; NaN/inf follow the scatter definition;
the wrapper copes with non-contiguous input. Also ``auto``'s rule. The registry-wide parity suite covers the rest."""

import dataclasses
import math

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import testbed
import testbed.cases
from testbed import planner, preference
from testbed.backends import numba_cpu
from testbed.backends.numba_cpu import blocking, gemm_col2im
from testbed.problem import LAYOUTS_BY_RANK, Problem
from testbed.testing import assert_close, assert_close_to_oracle, call_kwargs, oracle


def _problem(
    c_in,
    c_out,
    size,
    kernel,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups=1,
    batch=1,
    bias=True,
    dtype=np.float64,
):
    return Problem(
        batch=batch,
        in_channels=c_in,
        in_size=size,
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        dtype=dtype,
        has_bias=bias,
    )


# (configuration, the path choose_path must take). Asymmetric sizes, strides, paddings everywhere.
CASES = {
    "unet_k2s2": (_problem(8, 4, (5, 6), 2, 2), "nonoverlap_gemm"),
    # nonoverlap_direct (from 512 input pixels): rows (C_out/G·kH·kW) not a multiple of its 6-row tile, panels
    # of pixels across input rows and past the image, groups, a batch, output_padding (bias only), a taller kernel
    "nonoverlap_direct_wide": (
        _problem(8, 10, (15, 37), 2, 2, output_padding=(1, 1), groups=2, batch=2),
        "nonoverlap_direct",
    ),
    "nonoverlap_direct_k3x2": (_problem(5, 16, (33, 35), (3, 2), (3, 2), bias=False), "nonoverlap_direct"),
    "nonoverlap_asym_pad_op": (
        _problem(6, 4, (4, 5), (2, 3), (2, 3), padding=(1, 2), output_padding=(1, 0), batch=2),
        "nonoverlap_gemm",
    ),
    "nonoverlap_groups": (_problem(8, 12, (3, 4), 3, 3, groups=2, bias=False), "nonoverlap_gemm"),
    "k4s2p1": (_problem(8, 6, (5, 4), 4, 2, 1, batch=2), "gemm_col2im"),
    "k3s2p1op1_asym": (_problem(6, 8, (4, 7), (3, 2), (2, 3), (1, 0), (1, 2)), "gemm_col2im"),
    "stride1_dilation": (_problem(5, 7, (6, 5), (3, 2), 1, (2, 1), dilation=(2, 3)), "gemm_col2im"),
    "stride_gt_kernel": (_problem(4, 6, (3, 4), 2, (3, 4), output_padding=(2, 1)), "gemm_col2im"),
    "stride_and_dilation": (_problem(8, 8, (4, 5), 3, 2, 2, 1, dilation=2, groups=2), "direct"),
    "big_padding": (_problem(4, 8, (5, 5), 5, 2, 4, 1), "gemm_col2im"),
    "depthwise": (_problem(6, 6, (5, 6), 4, 2, 1, groups=6, batch=2), "direct"),
    "depth_multiplier": (_problem(3, 6, (5, 4), 3, (2, 1), 1, groups=3), "direct"),
    "tiny_channels": (_problem(1, 2, (3, 4), 3, 2, bias=False), "direct"),
    # blocked_direct: C_in/G not a multiple of its 4-channel step, C_out/G not a multiple of a vector, tiles of
    # several rows that span images (narrow outputs), rows and columns that no tap reaches.
    "blocked_k4s2p1": (_problem(6, 16, (5, 4), 4, 2, 1, batch=2), "blocked_direct"),
    "blocked_k3s2p1op1_asym": (_problem(5, 20, (4, 7), (3, 2), (2, 3), (1, 0), (1, 2)), "blocked_direct"),
    "blocked_dilation_groups": (
        _problem(8, 32, (6, 5), (3, 2), 1, (2, 1), dilation=(2, 3), groups=2, bias=False),
        "blocked_direct",
    ),
    "blocked_narrow_batch": (_problem(4, 16, (2, 3), 3, 2, 1, 1, batch=3), "blocked_direct"),
    "gaps_wide_channels": (_problem(4, 16, (3, 4), 2, (3, 4), output_padding=(2, 1)), "gemm_col2im"),
    "blocked_big_padding": (_problem(7, 16, (5, 5), 5, 2, 4, 1), "blocked_direct"),
    # deep GEMMs: gemm_col2im from 1024 input channels per group on images of several rows (from 256 on one row)
    "blocked_deep": (_problem(256, 16, (3, 4), 4, 2, 1), "blocked_direct"),
    "gemm_col2im_deeper": (_problem(1024, 16, (3, 4), 4, 2, 1), "gemm_col2im"),
}


@pytest.mark.parametrize("name", CASES)
def test_choose_path(name):
    problem, path = CASES[name]
    assert numba_cpu.choose_path(problem) == path


@pytest.mark.parametrize("path", numba_cpu.PATHS)
@pytest.mark.parametrize("name", CASES)
def test_every_path_matches_oracle_float64(name, path):
    """Each path is forced on every configuration it can compute, not just the one it is chosen for."""
    problem, _ = CASES[name]
    if path in ("nonoverlap_gemm", "nonoverlap_direct") and not problem.is_nonoverlapping:
        pytest.skip(f"{path} needs stride == kernel, dilation 1")
    x, weight, bias = problem.random_arrays(1)
    y = numba_cpu.run_path(path, x, weight, bias, problem)
    assert y.shape == problem.output_shape
    assert_close_to_oracle(y, x, weight, bias, err_msg=path, **call_kwargs(problem))


def _float32_call(name):
    problem = CASES[name][0].with_(dtype=np.float32)
    x, weight, bias = problem.random_arrays(2)
    return (
        problem,
        x,
        weight,
        bias,
        testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **call_kwargs(problem)),
    )


@pytest.mark.parametrize("name", CASES)
def test_float32_matches_oracle(name):
    problem, x, weight, bias, y = _float32_call(name)
    assert_close_to_oracle(y, x, weight, bias, **call_kwargs(problem))


@pytest.mark.parametrize("name", CASES)
def test_float32_matches_torch(name):
    pytest.importorskip("torch")
    problem, x, weight, bias, y = _float32_call(name)
    assert_close(y, testbed.get_backend("torch").run(x, weight, bias, problem))


@pytest.mark.parametrize("name", ["unet_k2s2", "k4s2p1", "depthwise", "blocked_k4s2p1", "nonoverlap_direct_wide"])
def test_bitwise_repeatable_and_inputs_untouched(name):
    problem = CASES[name][0].with_(batch=3, in_size=(17, 19), dtype=np.float32)
    x, weight, bias = problem.random_arrays(3)
    copies = [a.copy() for a in (x, weight, bias)]
    backend = testbed.get_backend("numba_cpu")
    first, second = backend.run(x, weight, bias, problem), backend.run(x, weight, bias, problem)
    assert np.array_equal(first, second)
    for original, copy in zip((x, weight, bias), copies):
        assert np.array_equal(original, copy)


@pytest.mark.parametrize("name", ["unet_k2s2", "k4s2p1", "depthwise", "blocked_k4s2p1"])
def test_noncontiguous_input(name):
    problem = CASES[name][0]
    x, weight, bias = problem.random_arrays(4)
    # A Fortran-ordered copy and a strided view hold the same values as the C-ordered input.
    wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]))
    wide[..., ::2] = x
    kwargs = call_kwargs(problem)
    expected = testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **kwargs)
    for view in (np.asfortranarray(x), wide[..., ::2]):
        assert np.array_equal(testbed.conv_transpose2d(view, weight, bias, backend="numba_cpu", **kwargs), expected)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("path", numba_cpu.PATHS)
@pytest.mark.parametrize(
    "name",
    [
        "unet_k2s2",
        "k4s2p1",
        "stride_gt_kernel",
        "depthwise",
        "blocked_narrow_batch",
        "blocked_big_padding",
        "nonoverlap_direct_wide",
    ],
)
def test_nan_and_inf_reach_exactly_the_outputs_of_the_definition(name, path):
    problem = CASES[name][0]
    if path in ("nonoverlap_gemm", "nonoverlap_direct") and not problem.is_nonoverlapping:
        pytest.skip(f"{path} needs stride == kernel, dilation 1")
    x, weight, bias = problem.random_arrays(5)
    x[0, 0, 1, 2] = np.nan
    x[-1, -1, -1, 0] = np.inf
    weight[0, 0, -1, 0] = -np.inf  # a border tap: some of its products are cropped away
    y = numba_cpu.run_path(path, x, weight, bias, problem)
    reference = oracle(x, weight, bias, **call_kwargs(problem))
    for special in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(special(y), special(reference))
    assert np.isnan(reference).any() and np.isinf(reference).any()


@pytest.mark.parametrize("name", ["blocked_k3s2p1op1_asym", "blocked_narrow_batch", "blocked_dilation_groups"])
def test_blocked_direct_does_not_depend_on_its_tiles(name):
    """Every output's sum runs in the same order whatever the channel and row tiles, the taps summed in registers
    at once (the inner pixels' chunks, the border pixels' one by one) and thread count: bitwise the same result for
    every tiling, and as ``choose_path``'s default tiling."""
    problem = CASES[name][0].with_(dtype=np.float32, has_bias=True)
    x, weight, bias = problem.random_arrays(9)
    expected = numba_cpu.run_path("blocked_direct", x, weight, bias, problem)
    row = blocking.blocking()
    for tile_co in (row.lanes(4), 2 * row.lanes(4), row.max_tile_co):
        for tile_rows in (1, 3, row.tile_pixels):
            y = numba_cpu.run_path("blocked_direct", x, weight, bias, problem, tile_co=tile_co, tile_rows=tile_rows)
            assert np.array_equal(y, expected), (tile_co, tile_rows)
    for tap_chunk in (1, 2, 3, 64):
        y = numba_cpu.run_path("blocked_direct", x, weight, bias, problem, tap_chunk=tap_chunk)
        assert np.array_equal(y, expected), tap_chunk
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)  # also changes the default row tile of small problems
        assert np.array_equal(numba_cpu.run_path("blocked_direct", x, weight, bias, problem), expected)
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("name", [name for name, (_, path) in CASES.items() if path in numba_cpu.NHWC_PATHS])
def test_channels_last_paths_match_nchw_bitwise(name):
    """The paths that compute NHWC natively (input read channels-last, output written channels-last, also into
    ``out=``) give bitwise the NCHW result, transposed."""
    problem = CASES[name][0]
    x, weight, bias = problem.random_arrays(11)
    expected = testbed.conv_transpose2d(x, weight, bias, backend="numba_cpu", **call_kwargs(problem))
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    channels_last = call_kwargs(problem.with_(layout="NHWC"))
    y = testbed.conv_transpose2d(x_nhwc, weight, bias, backend="numba_cpu", **channels_last)
    assert np.array_equal(y.transpose(0, 3, 1, 2), expected)
    out = np.full_like(y, np.nan)
    testbed.conv_transpose2d(x_nhwc, weight, bias, backend="numba_cpu", out=out, **channels_last)
    assert np.array_equal(out, y)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_blocked_direct_stale_workspace_never_leaks():
    """NaN left in blocked_direct's kept buffers (channels-last input, packed weight and its padding lanes) by
    an earlier, wider call must not reach the result (the padding lanes' accumulators are never written out)."""
    from testbed import workspace

    wide, (problem, _) = CASES["blocked_dilation_groups"][0], CASES["blocked_k3s2p1op1_asym"]
    numba_cpu.run_path("blocked_direct", *wide.random_arrays(1), wide)
    for name in ("numba_cpu.blocked_weight", "numba_cpu.channels_last_input"):
        workspace._pool().buffers[name].view(np.uint8)[:] = 0xFF  # all-ones bytes: NaN
    x, weight, bias = problem.random_arrays(2)
    y = numba_cpu.run_path("blocked_direct", x, weight, bias, problem)
    assert np.isfinite(y).all()
    assert_close_to_oracle(y, x, weight, bias, **call_kwargs(problem))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ["unet_k2s2", "nonoverlap_direct_wide", "nonoverlap_direct_k3x2"])
def test_nonoverlap_direct_is_blocked_direct_bitwise(name, layout):
    """``nonoverlap_direct`` sums as ``blocked_direct`` does (ci ascending from +0.0, one FMA per product), so its
    result is bitwise that one's, in both layouts, float32 and float64, whatever its tasks (one pixel block per
    task or one per panel) and threads, and into ``out=`` as well; its kept buffers never leak into it."""
    from testbed import workspace

    for dtype in (np.float64, np.float32):
        problem = CASES[name][0].with_(dtype=dtype)
        x, weight, bias = problem.random_arrays(12)
        expected = numba_cpu.run_path("blocked_direct", x, weight, bias, problem)
        if layout == "NHWC":
            problem, x = problem.with_(layout="NHWC"), np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            expected = expected.transpose(0, 2, 3, 1)
        assert np.array_equal(numba_cpu.run_path("nonoverlap_direct", x, weight, bias, problem), expected)
        for name_ in ("numba_cpu.panel_weight", "numba_cpu.row_weight", "numba_cpu.pixel_panels"):
            if name_ in workspace._pool().buffers:
                workspace._pool().buffers[name_].view(np.uint8)[:] = 0xFF  # all-ones bytes: NaN
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            out = np.full(problem.output_shape, np.nan, dtype)
            numba_cpu.run_path(
                "nonoverlap_direct",
                x,
                weight,
                bias,
                problem,
                out=out,  # a panel per task
                blocking=dataclasses.replace(blocking.blocking(), nonoverlap_block_bytes=1),
            )
        finally:
            numba.set_num_threads(threads)
        assert np.array_equal(out, expected)


def test_nonoverlap_direct_refuses_what_it_cannot_compute():
    """Forced onto a problem outside its rule's reach, the path raises instead of overrunning its stack tile."""
    for problem in (_problem(4, 16, (3, 3), 5, 5), _problem(4, 16, (3, 3), 2, 1)):
        with pytest.raises(ValueError, match="nonoverlap_direct needs stride == kernel"):
            numba_cpu.run_path("nonoverlap_direct", *problem.random_arrays(0), problem)


def test_blocked_direct_sign_of_zero():
    """Outputs that no product reaches, or whose products are all -0.0, are +0.0 + bias (PyTorch's sign): a
    -0.0 bias alone gives +0.0."""
    problem = CASES["gaps_wide_channels"][0]
    x, weight, _ = problem.random_arrays(10)
    y = numba_cpu.run_path(
        "blocked_direct", -0.0 * np.abs(x), np.abs(weight), np.full(problem.out_channels, -0.0), problem
    )
    assert not np.signbit(y).any()


# ---- auto --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["unet", "decoder"])
def test_auto_follows_its_class_preference(suite):
    for problem in testbed.cases.suite(suite).values():
        first_available = next(
            name for name in preference.preference_table().order_for(problem)[1] if testbed.get_backend(name).available
        )
        assert planner.choose_backend(problem).name == first_available
        if problem.is_nonoverlapping:
            assert first_available == "numba_cpu"


@pytest.mark.parametrize("suite", ["unet", "decoder", "tiny"])
def test_auto_without_torch(monkeypatch, suite):
    from testbed.backends import torch_backend

    monkeypatch.setattr(torch_backend, "_torch", lambda: None)
    assert not testbed.get_backend("torch").available
    for problem in testbed.cases.suite(suite).values():
        chosen = planner.choose_backend(problem)
        assert chosen.name != "torch" and chosen.available and chosen.supports(problem)


def test_auto_runs_every_tiny_case():
    for problem in testbed.cases.suite("tiny").values():
        problem = problem.with_(dtype=np.float64, has_bias=True)
        x, weight, bias = problem.random_arrays(7)
        y = testbed.get_backend("auto").run(x, weight, bias, problem)
        assert_close_to_oracle(y, x, weight, bias, **call_kwargs(problem))


@pytest.mark.parametrize("name", ["k4s2p1", "k3s2p1op1_asym", "stride1_dilation"])
def test_gemm_col2im_blocks_of_channels(name):
    """Its tasks' column blocks depend on the problem only: the same bits on one thread and on all; blocks of one
    channel (the smallest ``block_bytes``), and one GEMM per image instead of the images side by side, give the same
    result to rounding (BLAS may block a narrower GEMM differently); every block fits the row's ``block_bytes``
    where one channel's columns do."""
    problem = CASES[name][0].with_(batch=3, groups=2, in_channels=8, out_channels=8)
    x, weight, bias = problem.random_arrays(8)
    row = blocking.blocking()
    whole = numba_cpu.run_path("gemm_col2im", x, weight, bias, problem)
    assert_close_to_oracle(whole, x, weight, bias, **call_kwargs(problem))
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert np.array_equal(numba_cpu.run_path("gemm_col2im", x, weight, bias, problem), whole)
    finally:
        numba.set_num_threads(previous)
    tiny = dataclasses.replace(row, block_bytes=1)
    assert gemm_col2im.block_channels(problem, tiny) == 1
    assert_close(numba_cpu.run_path("gemm_col2im", x, weight, bias, problem, blocking=tiny), whole)
    # small images side by side in one GEMM (the default here) or one GEMM per image
    one_by_one = dataclasses.replace(row, gemm_side_by_side_pixels=0)
    assert gemm_col2im.side_by_side(problem, row) and not gemm_col2im.side_by_side(problem, one_by_one)
    assert_close(numba_cpu.run_path("gemm_col2im", x, weight, bias, problem, blocking=one_by_one), whole)
    per_channel = gemm_col2im.column_bytes_per_image(problem) // problem.out_channels
    assert gemm_col2im.block_channels(problem, row) * per_channel <= row.block_bytes


_pairs = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))  # noqa: E731


@settings(max_examples=60, deadline=None)
@given(
    kernel=_pairs(1, 4),
    stride=_pairs(1, 4),
    dilation=_pairs(1, 3),
    padding=_pairs(0, 5),
    size=_pairs(1, 6),
    op_seed=_pairs(0, 3),
    groups=st.integers(1, 2),
    nonoverlap=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_forced_paths_on_random_configurations(
    kernel, stride, dilation, padding, size, op_seed, groups, nonoverlap, seed
):
    """The registry-wide property test draws channel products too small for the GEMM and blocked paths; force
    them here."""
    if nonoverlap:
        stride, dilation = kernel, (1, 1)
    output_padding = tuple(o % max(s, d) for o, s, d in zip(op_seed, stride, dilation))
    try:
        problem = _problem(4 * groups, 5 * groups, size, kernel, stride, padding, output_padding, dilation, groups)
    except ValueError:
        assume(False)
    x, weight, bias = problem.random_arrays(seed)
    expected = oracle(x, weight, bias, **call_kwargs(problem))
    paths = ("gemm_col2im", "blocked_direct")
    for path in ("nonoverlap_gemm", "nonoverlap_direct", *paths) if nonoverlap else paths:
        assert_close(numba_cpu.run_path(path, x, weight, bias, problem), expected, err_msg=path)


# ---- every ISA row's kernels, on every host ------------------------------------------------------------------

ROW_CASES = {  # case: path. Panel tails, groups, output_padding; nonoverlap_direct's pairs of rows, a 3×2 kernel
    "blocked_k3s2p1op1_asym": "blocked_direct",
    "blocked_dilation_groups": "blocked_direct",
    "nonoverlap_direct_wide": "nonoverlap_direct",
    "nonoverlap_direct_k3x2": "nonoverlap_direct",
}


@pytest.mark.parametrize("row", [row for row in blocking.ROWS if row != blocking.blocking().isa])
@pytest.mark.parametrize("name", ROW_CASES)
def test_every_isa_row_computes_bitwise_the_default_rows_result(name, row):
    """Each row's register tiles (``avx512``'s 12 × 2 zmm, ``generic``'s 6 × 2 xmm) run here too, legalised by LLVM
    to this host's vectors: correct against the oracle and bitwise the result of this host's row (every row sums
    each output in the same order), in float32 and float64; ``nonoverlap_direct`` in both layouts (two kernels)."""
    path = ROW_CASES[name]
    for dtype, layout in ((np.float32, "NCHW"), (np.float64, "NCHW"), (np.float32, "NHWC"), (np.float64, "NHWC")):
        if path == "blocked_direct" and layout == "NHWC":
            continue  # the same kernel as NCHW's (only the output's strides differ)
        problem = CASES[name][0].with_(dtype=dtype)
        x, weight, bias = problem.random_arrays(13)
        expected = numba_cpu.run_path(path, x, weight, bias, problem)
        if layout == "NHWC":
            problem, x = problem.with_(layout="NHWC"), np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            expected = expected.transpose(0, 2, 3, 1)
        y = numba_cpu.run_path(path, x, weight, bias, problem, isa=row)
        assert np.array_equal(y, expected), (dtype, layout)
    problem = CASES[name][0]
    x, weight, bias = problem.random_arrays(14)
    assert_close_to_oracle(
        numba_cpu.run_path(path, x, weight, bias, problem, isa=row), x, weight, bias, **call_kwargs(problem)
    )


def test_run_path_refuses_bad_arguments():
    problem = CASES["k4s2p1"][0]
    arrays = problem.random_arrays(0)
    with pytest.raises(ValueError, match=r"name: expected one of direct, .*, got 'fft'"):
        numba_cpu.run_path("fft", *arrays, problem)
    with pytest.raises(ValueError, match="isa: expected one of avx512, avx2, generic, got 'sse'"):
        numba_cpu.run_path("blocked_direct", *arrays, problem, isa="sse")
    with pytest.raises(ValueError, match="nonoverlap_gemm needs stride == kernel"):
        numba_cpu.run_path("nonoverlap_gemm", *arrays, problem)
    with pytest.raises(ValueError, match="tile_co: expected a multiple of"):
        numba_cpu.run_path("blocked_direct", *arrays, problem, tile_co=3)
    with pytest.raises(TypeError, match="blocking: expected a numba_cpu Blocking"):
        numba_cpu.run_path("direct", *arrays, problem, blocking={"isa": "avx2"})


def test_blocking_rows_are_consistent():
    """Each row's tile fits its register file (with the weight vectors and a broadcast), covers the FMA latency
    (≥ 8 independent accumulators), and the rows are the ISA rows of ``testbed.isa``."""
    from testbed import isa

    registers = {"generic": 16, "avx2": 16, "avx512": 32}
    assert set(blocking.ROWS) == set(isa.ISA_ROWS)
    for name, row in blocking.ROWS.items():
        assert row.isa == name and row.vector_bytes == isa.vector_bytes(name)
        assert 8 <= row.accumulators <= registers[name] - row.panel_vectors - 1
    with pytest.raises(ValueError, match="panel_pixels: expected an even number"):
        dataclasses.replace(blocking.ROWS["avx2"], panel_pixels=5)


def test_wisdom_fingerprint_covers_the_package_and_the_row(monkeypatch):
    """Wisdom measured with other kernels is not applied: the source hash reads every file of the numba_cpu
    package (a change to its blocking table changes it), and the fingerprint names the ISA row."""
    from pathlib import Path

    from testbed import isa, wisdom

    before = wisdom._backends_source_hash()
    table, original = Path(blocking.__file__), Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: original(self) + (b"#" if self == table else b""))
    assert wisdom._backends_source_hash() != before
    assert wisdom.machine_fingerprint()["isa"] == isa.selected_isa()


def test_explain_names_the_path_and_the_isa_row():
    """``explain`` says which path numba_cpu takes and which ISA row its kernels were built for."""
    row = blocking.blocking()
    for name in ("blocked_k4s2p1", "nonoverlap_direct_wide", "depthwise"):
        problem = CASES[name][0]
        text = testbed.get_backend("numba_cpu").describe(problem)
        assert text.startswith(f"path {CASES[name][1]}, kernels of the {row.isa} row ({row.vector_bytes}-byte")
        explanation = testbed.explain(*problem.random_arrays(0), **call_kwargs(problem))
        assert explanation.kernels == (text if explanation.backend == "numba_cpu" else "")


# ---- ranks 1 and 3 -------------------------------------------------------------------------------------------

CONV = {1: testbed.conv_transpose1d, 3: testbed.conv_transpose3d}


def _ranked(c_in, c_out, size, kernel, stride=1, padding=0, output_padding=0, dilation=1, groups=1, batch=1):
    """A float64 problem with a bias whose rank is ``len(size)``."""
    return Problem(
        batch=batch,
        in_channels=c_in,
        in_size=size,
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        has_bias=True,
        rank=len(size),
    )


# (configuration, the path choose_path takes). 1-D: one row of a 2-D problem; 3-D: stride == kernel natively
# (nonoverlap_direct), everything else as a sum over depth taps of 2-D problems (the 2-D path named).
RANK_CASES = {
    "1d_k16s8p4": (_ranked(6, 20, (37,), 16, 8, 4, batch=2), "blocked_direct"),  # HiFi-GAN's up-sampling
    "1d_k4s2p1_groups": (_ranked(8, 32, (29,), 4, 2, 1, groups=2, batch=3), "blocked_direct"),
    "1d_k4s2p1_deep": (_ranked(512, 16, (9,), 4, 2, 1), "gemm_col2im"),
    "1d_k3s2_dilation_op": (_ranked(5, 7, (13,), 3, 2, 1, 1, dilation=2), "gemm_col2im"),
    "1d_depthwise": (_ranked(6, 6, (11,), 4, 2, 1, groups=6), "direct"),
    "1d_k2s2": (_ranked(8, 4, (33,), 2, 2), "nonoverlap_gemm"),
    "1d_k2s2_long": (_ranked(4, 16, (1031,), 2, 2, output_padding=1), "nonoverlap_direct"),
    "3d_k2s2_groups": (_ranked(8, 20, (3, 5, 7), 2, 2, groups=2, batch=2), "nonoverlap_direct"),
    "3d_k2s2_op": (_ranked(5, 16, (2, 3, 5), 2, 2, output_padding=(1, 0, 1)), "nonoverlap_direct"),
    "3d_k3x2x2": (_ranked(4, 6, (3, 2, 3), (3, 2, 2), (3, 2, 2), batch=3), "nonoverlap_direct"),
    "3d_k3s3": (_ranked(4, 6, (2, 3, 2), 3, 3), "nonoverlap_gemm"),  # 27 taps: more than its stack tile holds
    "3d_k2s2_padding": (_ranked(4, 6, (3, 3, 2), 2, 2, (1, 0, 1)), "nonoverlap_gemm"),
    "3d_k3s2p1op1": (_ranked(5, 6, (3, 4, 5), (3, 2, 2), (2, 1, 2), (1, 0, 1), (1, 0, 1)), "gemm_col2im"),
    "3d_blocked_dilation_groups": (
        _ranked(8, 32, (3, 3, 4), (2, 3, 2), (1, 2, 1), (1, 1, 0), dilation=(2, 1, 2), groups=2),
        "blocked_direct",
    ),
}


def _channels_last(problem, x):
    """``problem`` and its channels-first input ``x`` in the channels-last layout of the rank."""
    return problem.with_(layout=LAYOUTS_BY_RANK[problem.rank][1]), np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _naive(problem, x, weight, bias):
    """The float64 oracle: ``naive`` at the problem's rank, on widened arrays."""
    widened = [None if a is None else np.asarray(a, np.float64) for a in (x, weight, bias)]
    return CONV[problem.rank](*widened, backend="naive", **call_kwargs(problem))


def _torch(problem, x, weight, bias):
    """``torch.nn.functional.conv_transpose1d``/``3d`` on the channels-first arrays, in the problem's layout."""
    torch = pytest.importorskip("torch")
    first = problem.channels_last
    kwargs = {k: v for k, v in call_kwargs(problem).items() if k != "layout"}
    y = getattr(torch.nn.functional, f"conv_transpose{problem.rank}d")(
        torch.from_numpy(np.moveaxis(x, -1, 1) if first else x),
        torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias),
        **kwargs,
    ).numpy()
    return np.moveaxis(y, 1, -1) if first else y


@pytest.mark.parametrize("name", RANK_CASES)
def test_choose_path_ranks(name):
    problem, path = RANK_CASES[name]
    assert numba_cpu.choose_path(problem) == path
    last = problem.with_(layout=LAYOUTS_BY_RANK[problem.rank][1])
    assert numba_cpu.choose_path(last) == path
    assert testbed.get_backend("numba_cpu").describe(problem).startswith(f"path {path}")


@pytest.mark.parametrize("layout", ["channels first", "channels last"])
@pytest.mark.parametrize("name", RANK_CASES)
def test_every_path_matches_naive_ranks(name, layout):
    """Every path forced on every 1-D and 3-D configuration it can compute, in float64 and both layouts, against
    the float64 ``naive`` backend; the chosen one through the public function, also with ``out=``."""
    problem, _ = RANK_CASES[name]
    x, weight, bias = problem.random_arrays(1)
    expected = _naive(problem, x, weight, bias)
    if layout == "channels last":
        problem, x = _channels_last(problem, x)
        expected = np.moveaxis(expected, 1, -1)
    for path in numba_cpu.PATHS:
        if path.startswith("nonoverlap") and not problem.is_nonoverlapping:
            continue
        y = numba_cpu.run_path(path, x, weight, bias, problem)
        assert_close(y, expected, err_msg=path)
        assert np.array_equal(y, numba_cpu.run_path(path, x, weight, bias, problem)), path  # repeatable
    out = np.full(problem.output_shape, np.nan)
    CONV[problem.rank](x, weight, bias, backend="numba_cpu", out=out, **call_kwargs(problem))
    assert_close(out, expected)


@pytest.mark.parametrize("name", RANK_CASES)
def test_float32_ranks_match_naive_and_torch(name):
    """float32 through ``conv_transpose1d``/``3d``, both layouts, against the float64 oracle and torch."""
    problem = RANK_CASES[name][0].with_(dtype=np.float32)
    x, weight, bias = problem.random_arrays(2)
    for layout in ("channels first", "channels last"):
        p, xl = (problem, x) if layout == "channels first" else _channels_last(problem, x)
        y = CONV[p.rank](xl, weight, bias, backend="numba_cpu", **call_kwargs(p))
        assert y.dtype == np.float32
        assert_close(y, _naive(p, xl, weight, bias), err_msg=layout)
        assert_close(y, _torch(p, xl, weight, bias), err_msg=layout)


@pytest.mark.parametrize("name", ["1d_k16s8p4", "1d_k2s2_long", "3d_k2s2_groups", "3d_k3s2p1op1"])
def test_ranks_batches_unbatched_and_noncontiguous_out(name):
    """Batch 0, 1 and 3, an unbatched input, and a non-contiguous ``out=`` (every other element of a wider array),
    in both layouts: each as the oracle says, bitwise as the batched call's images."""
    problem = RANK_CASES[name][0]
    for layout in ("channels first", "channels last"):
        for batch in (0, 1, 3):
            p = problem.with_(batch=batch)
            x, weight, bias = p.random_arrays(3)
            if layout == "channels last":
                p, x = _channels_last(p, x)
            kwargs = call_kwargs(p)
            y = CONV[p.rank](x, weight, bias, backend="numba_cpu", **kwargs)
            assert y.shape == p.output_shape
            assert_close(y, _naive(p, x, weight, bias), err_msg=f"{layout} batch {batch}")
            wide = np.full((*p.output_shape[:-1], 2 * p.output_shape[-1]), np.nan)
            CONV[p.rank](x, weight, bias, backend="numba_cpu", out=wide[..., ::2], **kwargs)
            assert np.array_equal(wide[..., ::2], y) and np.isnan(wide[..., 1::2]).all()
            if batch == 3:
                assert np.array_equal(CONV[p.rank](x[1], weight, bias, backend="numba_cpu", **kwargs), y[1])


def test_blocked_direct_column_blocks_do_not_change_the_result():
    """A long 1-D sequence is one row: ``blocked_direct`` splits its columns into work items, and reads its NCL
    input as given. Every split, either input (and the default) give bitwise the same result."""
    problem = RANK_CASES["1d_k16s8p4"][0].with_(dtype=np.float32, in_size=(301,))
    x, weight, bias = problem.random_arrays(4)
    expected = numba_cpu.run_path("blocked_direct", x, weight, bias, problem)
    assert_close(expected, _naive(problem, x, weight, bias))
    for tile_cols in (1, 7, 128, 10**6):
        for planar in (True, False):  # the NCL input read as given, or a channels-last copy
            y = numba_cpu.run_path("blocked_direct", x, weight, bias, problem, tile_cols=tile_cols, planar=planar)
            assert np.array_equal(y, expected), (tile_cols, planar)
    with pytest.raises(ValueError, match="tile_cols: expected a positive int, got 0"):
        numba_cpu.run_path("blocked_direct", x, weight, bias, problem, tile_cols=0)


@pytest.mark.parametrize("name", ["3d_k2s2_groups", "3d_k2s2_op", "3d_k3x2x2"])
def test_nonoverlap_direct_3d_is_its_depth_taps_bitwise(name):
    """The 3-D ``nonoverlap_direct`` kernels sum each output as the 2-D ones do (ci ascending from +0.0, one FMA
    per product, bias last), so in both layouts and dtypes their result is bitwise the sum over depth taps of the
    2-D ``nonoverlap_direct`` (one tap per output when stride == kernel)."""
    for dtype in (np.float64, np.float32):
        problem = RANK_CASES[name][0].with_(dtype=dtype)
        x, weight, bias = problem.random_arrays(5)
        for p, xl in ((problem, x), _channels_last(problem, x)):
            y = numba_cpu.run_path("nonoverlap_direct", xl, weight, bias, p)
            sub = numba_cpu.ranks.depth_slice_problem(p)
            assert numba_cpu.nonoverlap_direct.computes(p, blocking.blocking())

            def run_2d(x2, w2, b2, p2):
                return numba_cpu.run_path("nonoverlap_direct", x2, w2, b2, p2)

            expected = numba_cpu.ranks.depth_taps(run_2d, xl, weight, bias, p, None, buffer_bytes=1)
            assert sub.rank == 2 and np.array_equal(y, expected), (dtype, p.layout)


# rows of 4, 8 and 12 pixels: NCHW panels of 16 float32 (8 float64) pixels that are runs of a quarter panel
PANEL_RUN_ROWS = {
    "3d_k2s2_rows4": _ranked(6, 20, (2, 3, 4), 2, 2, batch=2),
    "3d_k2s2_rows8": _ranked(6, 20, (2, 3, 8), 2, 2, batch=2),
    "2d_k2s2_rows12": _ranked(5, 7, (5, 12), 2, 2),
}


@pytest.mark.parametrize("name", ["3d_k2s2_groups", "3d_k2s2_op", "nonoverlap_direct_wide", *PANEL_RUN_ROWS])
def test_nonoverlap_direct_tasks_bitwise(name):
    """However ``nonoverlap_direct``'s work is split into tasks (NCHW: tasks split by row tiles as well where pixels
    are few, each waiting for its tiles' packing; on one thread or all) the sums are the same: bitwise one result,
    in both dtypes, matching the oracle in both layouts (NCHW panels whose pixels are four runs of input columns, a
    quarter panel each, are stored as four runs)."""
    problem = PANEL_RUN_ROWS.get(name) or (RANK_CASES[name] if name in RANK_CASES else CASES[name])[0]
    row = blocking.blocking()
    splits = [dataclasses.replace(row, items_per_thread=n, pack_row_tiles=t) for n, t in ((1, 1), (64, 2), (4, 32))]
    for dtype in (np.float64, np.float32):
        x, weight, bias = problem.with_(dtype=dtype).random_arrays(8)
        for p, xl in ((problem.with_(dtype=dtype), x), _channels_last(problem.with_(dtype=dtype), x)):
            expected = numba_cpu.run_path("nonoverlap_direct", xl, weight, bias, p, blocking=row)
            assert_close_to_oracle(expected, xl, weight, bias, **call_kwargs(p))
            for threads in (1, numba.get_num_threads()):
                previous = numba.get_num_threads()
                numba.set_num_threads(threads)
                try:
                    for split in splits:
                        y = numba_cpu.run_path("nonoverlap_direct", xl, weight, bias, p, blocking=split)
                        assert np.array_equal(y, expected), (dtype, p.layout, threads, split.items_per_thread)
                finally:
                    numba.set_num_threads(previous)


@numba.njit
def _pack_every_vector(weight, packed):
    for g in range(packed.shape[0]):
        for v in range(packed.shape[1]):
            numba_cpu.packing.pack_panel(weight, packed, g, v, 4)


@pytest.mark.parametrize("lanes", [8, 16, 32])
@pytest.mark.parametrize("kernel", [(1, 2, 2), (2, 2, 2), (1, 1, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_panel_is_the_panel_layout(kernel, lanes, dtype):
    """``pack_panel`` (its in-register transposes for 4 and 8 taps of a whole vector of 8, 16 or 32 lanes, the
    element loop otherwise) writes ``packed[g, v, tap, ci, l] = W[g·Ci_g + ci, v·L + l, tap]``, zero past the group's
    output channels: checked against NumPy with two groups and a partial last vector."""
    groups, per_group_in, per_group_out = 2, 3, 2 * lanes + 5
    weight = np.random.default_rng(3).standard_normal((groups * per_group_in, per_group_out, *kernel)).astype(dtype)
    vectors, taps = -(-per_group_out // lanes), math.prod(kernel)
    packed = np.full((groups, vectors, kernel[0] * kernel[1], kernel[2], per_group_in, lanes), np.nan, dtype)
    _pack_every_vector(weight, packed)
    padded = np.zeros((groups, per_group_in, vectors * lanes, taps), dtype)
    padded[:, :, :per_group_out] = weight.reshape(groups, per_group_in, per_group_out, taps)
    expected = padded.reshape(groups, per_group_in, vectors, lanes, taps).transpose(0, 2, 4, 1, 3)
    assert np.array_equal(packed.reshape(expected.shape), expected)
    for pack_weight in (numba_cpu.packing.pack_weight, numba_cpu.packing.pack_weight.serial):  # every vector
        every = np.full_like(packed, np.nan)
        pack_weight(weight, every)
        assert np.array_equal(every, packed)


@pytest.mark.parametrize("shape", [(2, 64, 32, 40), (1, 13, 3, 21), (3, 8, 5, 8), (1, 3, 2, 2), (1, 16, 1, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_channels_last_is_the_transpose(shape, dtype):
    """``to_channels_last`` (8 × 8 blocks transposed in registers, element loops for the channels and pixels past
    the last whole block), serial and parallel, writes ``x.transpose(0, 2, 3, 1)``; ``channels_last_input`` also
    takes a strided input."""
    from testbed.backends.numba_cpu.packing import channels_last_input, to_channels_last

    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    for kernel in (to_channels_last, to_channels_last.serial):
        pixels = np.full(shape[:1] + shape[2:] + shape[1:2], np.nan, dtype)
        kernel(x, pixels)
        assert np.array_equal(pixels, x.transpose(0, 2, 3, 1))
    strided = np.repeat(x, 2, axis=3)[..., ::2]
    nchw = Problem(batch=shape[0], in_channels=shape[1], in_size=shape[2:], out_channels=1, kernel_size=1, dtype=dtype)
    assert np.array_equal(channels_last_input(strided, nchw, blocking.blocking()), x.transpose(0, 2, 3, 1))
