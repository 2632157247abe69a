"""``numba_cpu``'s own backward pass (:mod:`testbed.backends.numba_cpu.backward_data`, ``backward_weight``): each
path forced, at ranks 1, 2 and 3, in both layouts, against the ``naive`` oracle (the definition) in float64 and
float32; the column chunks and GEMM blocks cut where the test makes them; results bitwise repeatable across calls
and thread counts. The registry-wide suite (tests/test_backward.py) checks the public call against torch."""

import dataclasses

import numba
import numpy as np
import pytest

import testbed
from testbed.backends.naive import correlate_weight_gradient, gather_data_gradient
from testbed.backends.numba_cpu import backward_data, backward_weight, blocking
from testbed.problem import LAYOUTS_BY_RANK
from testbed.testing import assert_close

# (name, batch, C_in, C_out, size, kernel, params): odd sizes, asymmetric parameters, groups, depthwise, padding
# that crops into the kernel's reach, output_padding, dilation; sizes that cut the GEMMs into several blocks.
CASES = [
    ("1d_k5s3p2op1", 3, 3, 4, (11,), (5,), dict(stride=3, padding=2, output_padding=1)),
    ("1d_depthwise_dil", 1, 4, 4, (9,), (3,), dict(stride=2, padding=1, groups=4, dilation=2)),
    ("2d_unet_k2s2", 1, 6, 3, (5, 7), (2, 2), dict(stride=2)),
    ("2d_asym_groups", 3, 4, 6, (5, 6), (3, 4), dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=2)),
    ("2d_big_padding_dil", 2, 3, 5, (6, 5), (3, 2), dict(stride=(1, 2), padding=3, dilation=(2, 1))),
    ("2d_blocks", 1, 5, 131, (23, 25), (2, 2), dict(stride=2)),  # 575 pixels, 524 weight columns: 2 blocks each
    ("3d_k2s2", 2, 3, 4, (3, 2, 3), (2, 2, 2), dict(stride=2)),
    ("3d_asym_groups", 1, 4, 4, (3, 4, 2), (3, 2, 2), dict(stride=(2, 1, 3), padding=(1, 0, 1), groups=2)),
]
IDS = [case[0] for case in CASES]


def arrays(case, dtype=np.float64, layout_index=0, seed=0, batch=None):
    """``(problem, grad_output, x, w)`` of a case in the channels-first (0) or channels-last (1) layout."""
    _, n, c_in, c_out, size, kernel, params = case
    n = n if batch is None else batch
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, *size)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // params.get("groups", 1), *kernel)).astype(dtype)
    layout = LAYOUTS_BY_RANK[len(size)][layout_index]
    problem = testbed.Problem.from_shapes(x.shape, w.shape, dtype=dtype, **params).with_(layout=layout)
    go = rng.standard_normal(problem.with_(layout=LAYOUTS_BY_RANK[len(size)][0]).output_shape).astype(dtype)
    if layout_index:
        x, go = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, go))
    return problem, go, x, w


def oracle(problem, go, x, w):
    """The naive definition in float64, channels first, in the problem's layout."""
    first = problem.with_(layout=LAYOUTS_BY_RANK[problem.rank][0], dtype=np.dtype(np.float64))
    if problem.channels_last:
        x, go = (np.moveaxis(a, -1, 1) for a in (x, go))
    go, x, w = (np.ascontiguousarray(a, dtype=np.float64) for a in (go, x, w))
    grad_input = gather_data_gradient(go, w, first)
    if problem.channels_last:
        grad_input = np.moveaxis(grad_input, 1, -1)
    return grad_input, correlate_weight_gradient(go, x, first)


@pytest.mark.parametrize("path", backward_data.PATHS)
@pytest.mark.parametrize("layout_index", [0, 1], ids=["first", "last"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_each_path_matches_the_definition(case, layout_index, path):
    for dtype in (np.float64, np.float32):
        problem, go, x, w = arrays(case, dtype, layout_index)
        want_input, want_weight = oracle(problem, go, x, w)
        grad_input = backward_data.run(go, w, problem, path=path)
        grad_weight = backward_weight.run(go, x, problem, path=path)
        assert grad_input.shape == problem.input_shape and grad_input.dtype == dtype
        assert grad_weight.shape == problem.weight_shape and grad_weight.dtype == dtype
        assert_close(grad_input, want_input, err_msg=f"{path} data gradient")
        assert_close(grad_weight, want_weight, err_msg=f"{path} weight gradient")


@pytest.mark.parametrize("layout_index", [0, 1], ids=["first", "last"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[7]], ids=["1d", "2d", "3d"])
def test_column_chunks_of_one_pixel_accumulate_in_order(case, layout_index):
    """A column buffer of one pixel at a time: the data gradient chunk by chunk, the weight gradient summed over
    chunks and images (the accumulating GEMM blocks)."""
    problem, go, x, w = arrays(case, np.float64, layout_index)
    one_pixel = dataclasses.replace(blocking.blocking(), column_buffer_bytes=1)
    want_input, want_weight = oracle(problem, go, x, w)
    assert_close(backward_data.run(go, w, problem, path="gemm", blocking=one_pixel), want_input)
    assert_close(backward_weight.run(go, x, problem, path="gemm", blocking=one_pixel), want_weight)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_batch_sizes_through_the_public_call(batch):
    problem, go, x, w = arrays(CASES[3], np.float64, 1, batch=batch)
    got = testbed.conv_transpose_backward(
        go, x, w, stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=2, backend="numba_cpu", layout="NHWC"
    )
    want_input, want_weight = oracle(problem, go, x, w) if batch else (np.zeros(x.shape), np.zeros(w.shape))
    assert_close(got.grad_input, want_input)
    assert_close(got.grad_weight, want_weight)


def test_paths_chosen_by_channel_product():
    depthwise = arrays(CASES[1])[0]
    wide = arrays(CASES[5])[0]
    assert backward_data.choose_path(depthwise) == backward_weight.choose_path(depthwise) == "direct"
    assert backward_data.choose_path(wide) == backward_weight.choose_path(wide) == "gemm"
    problem, go, _, w = arrays(CASES[0])
    with pytest.raises(ValueError, match="path: expected one of gemm, direct, got 'col2im'"):
        backward_data.run(go, w, problem, path="col2im")


@pytest.mark.parametrize("path", backward_data.PATHS)
@pytest.mark.parametrize("layout_index", [0, 1], ids=["first", "last"])
def test_bitwise_repeatable_across_calls_and_thread_counts(path, layout_index):
    """Each output is one block's, summed in an order fixed by the problem: the same bits on every call, and on
    one thread as on all of them (float32, where reordered sums would show)."""
    problem, go, x, w = arrays(CASES[5], np.float32, layout_index, batch=2)
    threads = numba.get_num_threads()

    def both():
        return backward_data.run(go, w, problem, path=path), backward_weight.run(go, x, problem, path=path)

    first = both()
    again = both()
    try:
        numba.set_num_threads(1)
        single = both()
    finally:
        numba.set_num_threads(threads)
    for a, b, c in zip(first, again, single):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_backward_speed_experiment_times_both_peers_and_tabulates():
    """``python -m experiments.backward_speed``'s pieces in this process on a tiny problem (the CLI runs them in
    fresh workers): each peer's data + weight gradients timed, and a row per (case, layout) with torch's ratio."""
    pytest.importorskip("torch")
    from experiments import backward_speed
    from testbed.timing import TimingSettings

    problem = arrays(CASES[2], np.float32, 1)[0]
    rows = {
        peer: backward_speed.time_peer(problem, peer, TimingSettings.quick(), None) for peer in backward_speed.PEERS
    }
    assert all(row["samples_s"] and row["median_s"] > 0 for row in rows.values())
    table = {("tiny", "NHWC"): {"numba_cpu": [0.002, 0.004], "torch": [0.006]}}
    assert backward_speed.markdown(table).splitlines()[-1] == "| tiny | NHWC | 3 (2) | 6 (6) | 2.00 |"
