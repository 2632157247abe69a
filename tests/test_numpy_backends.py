"""Backend-specific paths of the NumPy backends (and torch) that the registry-wide tests would not force: their
blocks, phases, and every spatial rank (1-D, 2-D, 3-D) in both layouts against the float64 oracle and PyTorch."""

import numpy as np
import pytest

import testbed
import testbed.backends.fft as fft_backend
from helpers import call_arrays
from testbed.registry import layout_axes
from testbed.testing import assert_close, assert_close_to_oracle, call_kwargs, oracle, tolerance

#: Per rank, a configuration with odd sizes and different stride, padding, dilation and output_padding on
#: every axis, and two groups (Problem fields; batch and dtype are the tests').
_FFT_RANK_CASES = {
    1: dict(
        in_channels=4,
        in_size=(11,),
        out_channels=6,
        kernel_size=(4,),
        stride=(3,),
        padding=(2,),
        dilation=(2,),
        output_padding=(1,),
        groups=2,
    ),
    2: dict(
        in_channels=4,
        in_size=(5, 7),
        out_channels=6,
        kernel_size=(3, 2),
        stride=(2, 3),
        padding=(1, 0),
        dilation=(1, 2),
        output_padding=(1, 1),
        groups=2,
    ),
    3: dict(
        in_channels=4,
        in_size=(5, 3, 4),
        out_channels=6,
        kernel_size=(3, 2, 3),
        stride=(2, 1, 3),
        padding=(1, 0, 2),
        dilation=(1, 2, 3),
        output_padding=(1, 1, 0),
        groups=2,
    ),
}


def _fft_and_references(problem, *, unbatched=False, out=False, seed=0):
    """fft's result on ``problem``'s random arrays (with a bias), checked against the float64 naive oracle and
    torch.nn.functional.conv_transpose{1,2,3}d (computed in float64 on the same values) within the dtype's
    tolerance; ``out``: written into a given array, which is returned."""
    x, w, b = problem.random_arrays(seed)
    if unbatched:
        x = x[0]
    params = call_kwargs(problem)
    function = getattr(testbed, f"conv_transpose{problem.rank}d")
    given = np.full(problem.output_shape[1:] if unbatched else problem.output_shape, np.nan, problem.dtype)
    y = function(x, w, b, backend="fft", **params, **({"out": given} if out else {}))
    assert y.dtype == problem.dtype and (y is given) == out
    assert_close_to_oracle(y, x, w, b, **params, err_msg=f"fft vs naive, {problem}")
    torch = pytest.importorskip("torch")
    channels_first = testbed.problem.LAYOUTS_BY_RANK[problem.rank][0]
    to_torch, back = layout_axes(problem.layout, channels_first), layout_axes(channels_first, problem.layout)
    batched = x[None] if unbatched else x
    peer = (
        getattr(torch.nn.functional, f"conv_transpose{problem.rank}d")(
            torch.from_numpy(batched.transpose(to_torch).astype(np.float64)),
            torch.from_numpy(w.astype(np.float64)),
            torch.from_numpy(b.astype(np.float64)),
            **{key: params[key] for key in ("stride", "padding", "output_padding", "groups", "dilation")},
        )
        .numpy()
        .transpose(back)
    )
    assert_close(y, peer[0] if unbatched else peer, rtol=tolerance(problem.dtype), err_msg=f"fft vs torch, {problem}")
    return y


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fft_every_rank_matches_naive_and_torch(rank, dtype):
    """Odd sizes with per-axis stride/padding/dilation/output_padding and groups, batch 3, both layouts."""
    for channels_last in (False, True):
        layout = testbed.problem.LAYOUTS_BY_RANK[rank][channels_last]
        problem = testbed.Problem(batch=3, **_FFT_RANK_CASES[rank], dtype=dtype, has_bias=True, layout=layout)
        _fft_and_references(problem)


@pytest.mark.parametrize("rank", [1, 3])
def test_fft_every_rank_depthwise_batches_unbatched_and_out(rank):
    """Depthwise (one input channel per group, two outputs each), batch 0 and 1, unbatched input, ``out=`` in
    both layouts."""
    depthwise = dict(
        _FFT_RANK_CASES[rank],
        in_channels=3,
        out_channels=6,
        groups=3,
        kernel_size=3,
        dilation=1,
        padding=1,
        output_padding=0,
    )
    for batch in (0, 1):
        _fft_and_references(testbed.Problem(batch=batch, **depthwise, has_bias=True, dtype="float32"))
    channels_first, channels_last = testbed.problem.LAYOUTS_BY_RANK[rank]
    _fft_and_references(testbed.Problem(batch=1, **depthwise, has_bias=True), unbatched=True)
    for layout in (channels_first, channels_last):
        problem = testbed.Problem(batch=2, **_FFT_RANK_CASES[rank], has_bias=True, layout=layout)
        _fft_and_references(problem, out=True)
        _fft_and_references(problem.with_(dtype=np.dtype(np.float32)), out=True, unbatched=True)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("blocks", [(1, 1, 1), (2, 1, 2), (1, 2, 4)])
def test_fft_blocks_match_one_block(monkeypatch, blocks, rank):
    """Images, channels and last-axis frequencies in blocks (kernel spectra recomputed per image block, one slab
    of frequencies at a time) give the one-block result, at every rank and in every direction: the forward and
    the data gradient (blocks of input channels) against the oracle, the weight gradient (blocks of grad_output's
    channels, the image sum accumulated across image blocks) too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, *(5, 4, 3)[:rank]))
    w = rng.standard_normal((6, 2, *(3,) * rank))
    params = dict(stride=2, padding=1, output_padding=1, groups=3)
    conv_transpose = getattr(testbed, f"conv_transpose{rank}d")
    whole = conv_transpose(x, w, backend="fft", **params)
    grad_output = rng.standard_normal(whole.shape)
    whole_gradients = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="fft")
    problem = testbed.Problem.from_shapes(x.shape, w.shape, **params)
    fft_shape = fft_backend._fft_shape(problem)
    for direction in ("forward", "backward_data", "backward_weight"):  # one block each
        assert fft_backend._blocks(problem, fft_shape, direction) == (3, 2, fft_shape[-1] // 2 + 1)
    chosen = []

    def forced(problem, fft_shape, direction="forward"):
        chosen.append(direction)
        return fft_backend.Blocks(*blocks)

    monkeypatch.setattr(fft_backend, "_blocks", forced)
    blocked = conv_transpose(x, w, backend="fft", **params)
    assert_close(blocked, whole, rtol=1e-14)
    assert_close_to_oracle(blocked, x, w, **params)
    oracle = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive")
    # The weight gradient's two forms: per-frequency products and the adjoint chain (speedup 0), or per-tap GEMMs.
    per_tap = fft_backend._per_tap_lag_sums
    monkeypatch.setattr(fft_backend, "_per_tap_lag_sums", lambda *args: (chosen.append("per-tap"), per_tap(*args)))
    for speedup in (0, 1e9):
        monkeypatch.setattr(fft_backend, "PARSEVAL_SPEEDUP", speedup)
        gradients = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="fft")
        assert speedup > 0 or "per-tap" not in chosen  # per-tap where its chunk fits the blocks' budget
        for name in ("grad_input", "grad_weight"):
            assert_close(getattr(gradients, name), getattr(whole_gradients, name), rtol=1e-14, err_msg=name)
            assert_close(getattr(gradients, name), getattr(oracle, name), err_msg=name)
    assert {"forward", "backward_data", "backward_weight"} <= set(chosen)


@pytest.mark.parametrize("limit_mib", [0, 1, 4])
@pytest.mark.parametrize(
    "shape",
    [
        dict(batch=8, in_channels=64, in_size=(32, 32), out_channels=64, kernel_size=3, stride=2, padding=1),
        dict(batch=2, in_channels=256, in_size=(16, 16), out_channels=128, kernel_size=4, stride=2, padding=1),
        dict(batch=4, in_channels=32, in_size=(24, 24), out_channels=32, kernel_size=2, stride=2, groups=4),
        dict(batch=4, in_channels=64, in_size=(512,), out_channels=32, kernel_size=16, stride=8, padding=4),
        dict(batch=2, in_channels=8, in_size=(12, 12, 12), out_channels=16, kernel_size=3, stride=2, padding=1),
        dict(batch=2, in_channels=16, in_size=(10, 9, 8), out_channels=16, kernel_size=(3, 1, 5), padding=1),
        # test_memory_limits's 1-D and 3-D binding cases, which measure these blocks: they must not be declined.
        dict(batch=1, in_channels=32, in_size=(2048,), out_channels=32, kernel_size=7, padding=3),
        dict(batch=1, in_channels=16, in_size=(12, 12, 12), out_channels=16, kernel_size=3, padding=1),
    ],
)
def test_fft_blocks_hold_at_most_the_workspace_limit(monkeypatch, shape, limit_mib):
    """The blocks chosen keep the modelled peak under Problem.workspace_limit (the model itself is checked
    against measured memory in test_memory_limits)."""
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", limit_mib * 2**20)
    problem = testbed.Problem(**shape, dtype="float32")
    fft_shape = fft_backend._fft_shape(problem)
    blocks = fft_backend._blocks(problem, fft_shape)
    assert testbed.get_backend("fft").supports(problem)
    assert fft_backend._peak_bytes(problem, fft_shape, blocks) <= problem.workspace_limit
    assert blocks.images <= problem.batch and blocks.channels <= problem.out_per_group
    # The gradients' blocks: the weight gradient blocks output channels, the data gradient input channels.
    for direction, blocked in (("backward_data", problem.in_per_group), ("backward_weight", problem.out_per_group)):
        blocks = fft_backend._blocks(problem, fft_shape, direction)
        assert blocks is not None and fft_backend._too_large(problem, direction) is None, direction
        assert fft_backend._peak_bytes(problem, fft_shape, blocks, direction) <= problem.workspace_limit, direction
        assert blocks.images <= problem.batch and blocks.channels <= blocked, direction


@pytest.mark.parametrize("in_size", [(32, 32), (4096,), (6, 6, 6)], ids=["2d", "1d", "3d"])
def test_fft_declines_naming_the_bytes_it_would_need(monkeypatch, in_size):
    """Stride 4 spreads one image's 64 channels over transforms 4× longer per axis (2-D: 128×128, about 8.5 MB
    with one output channel; 1-D 16384 samples, 3-D 24×24×24): above a workspace limit of twice the arrays, fft
    declines with that size and the transform's shape; with 16 MiB it fits."""
    problem = testbed.Problem(
        batch=1, in_channels=64, in_size=in_size, out_channels=1, kernel_size=3, stride=4, dtype="float32"
    )
    fft_shape = fft_backend._fft_shape(problem)
    need = fft_backend._peak_bytes(problem, fft_shape, fft_backend.Blocks(1, 1, 1))
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 0)
    reason = testbed.get_backend("fft").unsupported_reason(problem)
    assert problem.workspace_limit < need and reason is not None
    assert f"{need:.3g} bytes" in reason and f"{problem.workspace_limit:.3g} bytes" in reason, reason
    assert f"64 channels of {'×'.join(map(str, fft_shape))} samples" in reason, reason
    x, w, _ = problem.random_arrays(0)
    conv_transpose = getattr(testbed, f"conv_transpose{problem.rank}d")
    with pytest.raises(testbed.UnsupportedConfiguration, match="workspace limit"):
        conv_transpose(x, w, stride=4, backend="fft")
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 16 * 2**20)
    assert_close_to_oracle(conv_transpose(x, w, stride=4, backend="fft"), x, w, stride=4)


@pytest.mark.parametrize("in_size", [(32, 32), (4096,), (6, 6, 6)], ids=["2d", "1d", "3d"])
def test_fft_gradients_decline_naming_the_bytes_they_would_need(monkeypatch, in_size):
    """The data gradient transforms grad_output's channels: with 1 input and 64 output channels at stride 4 the
    forward and the weight gradient (one input channel transformed) fit a limit of twice the arrays, the data
    gradient (64 channels of the 4×-longer transforms) does not, and says so with the bytes and the transform's
    shape; with 16 MiB it computes the oracle's gradient. The weight gradient's decline is the forward's (it
    holds the same arrays), refused by unsupported_reason before any work."""
    problem = testbed.Problem(
        batch=1, in_channels=1, in_size=in_size, out_channels=64, kernel_size=3, stride=4, dtype="float32"
    )
    fft_shape = fft_backend._fft_shape(problem)
    need = fft_backend._peak_bytes(problem, fft_shape, fft_backend.Blocks(1, 1, 1), "backward_data")
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 0)
    fft = testbed.get_backend("fft")
    assert fft.supports(problem, "forward") and fft.supports(problem, "backward_weight")
    reason = fft_backend._too_large(problem, "backward_data")
    assert problem.workspace_limit < need and reason is not None
    assert f"{need:.3g} bytes" in reason and f"{problem.workspace_limit:.3g} bytes" in reason, reason
    assert f"output gradient (64 channels of {'×'.join(map(str, fft_shape))} samples" in reason, reason
    x, w, _ = problem.random_arrays(0)
    grad_output = np.random.default_rng(1).standard_normal(problem.output_shape).astype(np.float32)
    with pytest.raises(testbed.UnsupportedConfiguration, match="workspace limit"):
        testbed.conv_transpose_backward(grad_output, x, w, stride=4, backend="fft")
    weight_only = testbed.conv_transpose_backward(
        grad_output, x, w, stride=4, backend="fft", output_mask=(False, True, False)
    )
    oracle = testbed.conv_transpose_backward(grad_output, x, w, stride=4, backend="naive")
    assert_close(weight_only.grad_weight, oracle.grad_weight)
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 16 * 2**20)
    got = testbed.conv_transpose_backward(grad_output, x, w, stride=4, backend="fft")
    assert_close(got.grad_input, oracle.grad_input)
    wide = problem.with_(in_channels=64, out_channels=1)  # the forward's decline holds the weight gradient too
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 0)
    assert fft.unsupported_reason(wide, "backward_weight") == fft_backend._too_large(wide)
    need = fft_backend._peak_bytes(wide, fft_shape, fft_backend.Blocks(1, 1, 1), "backward_weight")
    assert need == fft_backend._peak_bytes(wide, fft_shape, fft_backend.Blocks(1, 1, 1))
    assert f"one output channel's gradient need about {need:.3g} bytes" in fft_backend._too_large(
        wide, "backward_weight"
    )


@pytest.mark.parametrize("speedup", [0, 1e9], ids=["per-frequency", "per-tap"])
@pytest.mark.parametrize(
    "shape",
    [
        dict(in_channels=32, in_size=(64, 64), out_channels=32, kernel_size=3, padding=1),
        dict(in_channels=32, in_size=(2048,), out_channels=32, kernel_size=7, padding=3),
        dict(in_channels=16, in_size=(12, 12, 12), out_channels=16, kernel_size=3, padding=1),
    ],
    ids=["2d", "1d", "3d"],
)
def test_fft_gradients_temporaries_within_workspace_limit(monkeypatch, shape, speedup):
    """At a binding limit (twice the arrays, 0.5-2 MiB) each gradient's NumPy temporaries, measured by tracemalloc
    (the result excluded), stay under Problem.workspace_limit, with either form of the weight gradient."""
    import tracemalloc

    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 0)
    monkeypatch.setattr(fft_backend, "PARSEVAL_SPEEDUP", speedup)
    per_tap, forms = fft_backend._per_tap_lag_sums, []
    monkeypatch.setattr(fft_backend, "_per_tap_lag_sums", lambda *args: (forms.append("per-tap"), per_tap(*args)))
    problem = testbed.Problem(batch=1, **shape, dtype="float32")
    x, w, _ = problem.random_arrays(0)
    grad_output = np.random.default_rng(1).standard_normal(problem.output_shape).astype(np.float32)
    params = {key: shape[key] for key in ("stride", "padding") if key in shape}
    for index, mask in enumerate([(True, False, False), (False, True, False)]):
        # warm-up: caches filled once per process (the blocks, scipy's plans) are not the call's temporaries
        testbed.conv_transpose_backward(grad_output, x, w, **params, backend="fft", output_mask=mask)
        tracemalloc.start()
        try:
            result = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="fft", output_mask=mask)
            temporaries = tracemalloc.get_traced_memory()[1] - result[index].nbytes
        finally:
            tracemalloc.stop()
        assert temporaries <= problem.workspace_limit, (index, temporaries, problem.workspace_limit)
    assert bool(forms) == (speedup > 0)  # the form asked for ran


def test_fft_gradients_scale_by_powers_of_two_and_refuse_what_they_cannot_carry():
    """float32 data near the ends of its range (grad_output ~1e37, whose unscaled spectra overflow to inf, and an
    input ~1e-37, near the smallest normal) give both gradients to float32's tolerance, since only mantissas enter
    the transforms; a grad_output image (data gradient) or channel (weight gradient) whose magnitudes span more
    than the FFT carries is refused, naming it."""
    rng = np.random.default_rng(3)
    x = (rng.uniform(1, 2, (2, 4, 5, 6)) * 1e-37).astype(np.float32)
    w = (rng.standard_normal((4, 3, 3, 3)) * 1e-2).astype(np.float32)
    params = dict(stride=2, padding=1)
    grad_output = (rng.uniform(1, 2, testbed.output_shape(x.shape, w.shape, **params)) * 1e37).astype(np.float32)
    gradients = dict(output_mask=(True, True, False))  # the bias gradient, a sum of 1e37s, overflows float32
    got = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="fft", **gradients)
    wide = [a.astype(np.float64) for a in (grad_output, x, w)]
    want = testbed.conv_transpose_backward(*wide, **params, backend="naive", **gradients)
    assert_close(got.grad_input, want.grad_input)
    assert_close(got.grad_weight, want.grad_weight)
    spiked = grad_output * np.float32(1e-10)
    spiked[1, 2, 3, 4] = 1e37
    with pytest.raises(testbed.UnsupportedConfiguration, match="output gradient image 1 spans"):
        testbed.conv_transpose_backward(spiked, x, w, **params, backend="fft", output_mask=(True, False, False))
    with pytest.raises(testbed.UnsupportedConfiguration, match="output gradient channel 2 spans"):
        testbed.conv_transpose_backward(spiked, x, w, **params, backend="fft", output_mask=(False, True, False))


def test_polyphase_phase_subkernels_cover_every_tap_once():
    from testbed.backends.polyphase import phase_subkernels

    for kernel, stride, padding, dilation in [(3, 2, 1, 1), (5, 3, 2, 1), (2, 3, 0, 1), (3, 2, 0, 2), (4, 1, 1, 3)]:
        in_len = 6
        out_len = (in_len - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1
        pairs = set()
        for ph, _rows, taps in phase_subkernels(out_len, in_len, kernel, stride, padding, dilation):
            for k, offset, m_lo, m_hi in taps:
                for m in range(m_lo, m_hi):
                    o, i = ph + stride * m, m + offset
                    assert o + padding == i * stride + k * dilation  # the scatter definition's index rule
                    pairs.add((o, k, i))
        expected = {
            (i * stride + k * dilation - padding, k, i)
            for i in range(in_len)
            for k in range(kernel)
            if 0 <= i * stride + k * dilation - padding < out_len
        }
        assert pairs == expected


def test_single_threaded_blas_holds_in_every_thread():
    """fft and numba_cpu run their small GEMMs with BLAS on one thread; the limit must hold in whichever
    Python thread calls. Before, threadpoolctl ignored every thread but the first that had set a limit (the
    main thread, here), so a second thread's GEMMs ran on all cores and fft took 7× as long there."""
    import threading

    from threadpoolctl import threadpool_info

    from testbed.backends._blas import single_threaded_blas

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    default = blas_threads()
    if all(count == 1 for count in default.values()):
        pytest.skip("BLAS runs on one thread here already: nothing to limit")
    seen = {}

    def record(name):
        with single_threaded_blas():
            seen[name] = blas_threads()

    record("main")
    for name in ("second", "third"):
        thread = threading.Thread(target=record, args=(name,))
        thread.start()
        thread.join()
    record("main again")
    assert all(set(counts.values()) == {1} for counts in seen.values()), seen
    assert blas_threads() == default  # restored after each block


# ---- every spatial rank: col2im, kron, polyphase and torch against the float64 oracle and PyTorch ----------------

#: The backends of this file that compute every rank, each with its own algorithm written over N spatial axes.
RANKED = ("col2im", "kron", "polyphase", "torch")
CONV_TRANSPOSE = {1: testbed.conv_transpose1d, 2: testbed.conv_transpose2d, 3: testbed.conv_transpose3d}

#: name -> (C_in, C_out, in_size, kernel, params): tiny, odd sizes, every parameter different per axis where the
#: rank has several; the "blocks" cases have stride == kernel (and dilation 1), the only ones kron computes.
RANK_CASES = {
    "1d-overlap": (3, 5, (7,), (3,), dict(stride=2, padding=1, output_padding=1)),
    "1d-dilated-groups": (4, 6, (5,), (4,), dict(stride=3, padding=2, output_padding=2, dilation=2, groups=2)),
    "1d-depthwise": (4, 4, (9,), (5,), dict(stride=2, padding=2, groups=4)),
    "1d-blocks": (3, 2, (6,), (4,), dict(stride=4, padding=1, output_padding=3)),
    "2d-asymmetric": (
        4,
        2,
        (5, 4),
        (3, 2),
        dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2), groups=2),
    ),
    "2d-blocks": (3, 4, (3, 5), (2, 3), dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 0))),
    "3d-asymmetric": (
        4,
        6,
        (3, 4, 5),
        (2, 3, 1),
        dict(stride=(1, 2, 3), padding=(0, 1, 0), output_padding=(0, 1, 2), dilation=(2, 1, 1), groups=2),
    ),
    "3d-depthwise": (
        3,
        3,
        (3, 2, 4),
        (3, 2, 3),
        dict(stride=(2, 1, 2), padding=(1, 0, 2), dilation=(1, 2, 1), groups=3),
    ),
    "3d-blocks": (3, 4, (3, 2, 3), (2, 3, 2), dict(stride=(2, 3, 2), padding=(1, 0, 1), output_padding=(1, 0, 1))),
    "3d-blocks-groups": (4, 4, (2, 3, 1), (2, 2, 3), dict(stride=(2, 2, 3), groups=2)),
}


def _rank_call(case, batch, layout, dtype, bias=True, seed=0):
    """``(rank, x, w, b, params)`` of a RANK_CASES entry; ``batch`` None gives an unbatched input."""
    c_in, c_out, size, kernel, params = RANK_CASES[case]
    x, w, b = call_arrays(1 if batch is None else batch, c_in, c_out, size, kernel, params, dtype, bias, seed)
    if layout.endswith("C"):  # channels last: NLC, NHWC, NDHWC
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return len(size), (x[0] if batch is None else x), w, b, params


def _torch_reference(rank, x, w, b, params, layout):
    """``torch.nn.functional.conv_transpose{rank}d`` in float64 on channels-first copies, back in ``layout``."""
    torch = pytest.importorskip("torch")
    batched = x if x.ndim == rank + 2 else x[None]
    first = np.moveaxis(batched, -1, 1) if layout.endswith("C") else batched
    function = getattr(torch.nn.functional, f"conv_transpose{rank}d")
    tensors = [None if a is None else torch.from_numpy(np.array(a, dtype=np.float64)) for a in (first, w, b)]
    with torch.no_grad():
        y = function(*tensors, **params).numpy()
    y = np.moveaxis(y, 1, -1) if layout.endswith("C") else y
    return y if x.ndim == rank + 2 else y[0]


def _skip_without_torch(ranked_name):
    if ranked_name == "torch" and not testbed.get_backend("torch").available:
        pytest.skip(testbed.get_backend("torch").status)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout_family", ["channels first", "channels last"])
@pytest.mark.parametrize("case", list(RANK_CASES))
@pytest.mark.parametrize("ranked_name", RANKED)
def test_every_rank_matches_the_oracle_and_torch(ranked_name, case, layout_family, dtype):
    """Batch 3 with a bias, in both layouts of the rank (NCL/NLC, NCHW/NHWC, NCDHW/NDHWC): within the dtype's
    relative L2 tolerance (1e-12 float64, 1e-5 float32) of the float64 oracle and of PyTorch's function of the
    rank; kron refuses what it does not compute."""
    _skip_without_torch(ranked_name)
    rank = len(RANK_CASES[case][2])
    layout = testbed.problem.LAYOUTS_BY_RANK[rank][layout_family == "channels last"]
    _, x, w, b, params = _rank_call(case, 3, layout, dtype)
    if ranked_name == "kron" and "blocks" not in case:
        with pytest.raises(testbed.UnsupportedConfiguration, match="needs stride == kernel size and dilation 1"):
            CONV_TRANSPOSE[rank](x, w, b, backend="kron", layout=layout, **params)
        return
    y = CONV_TRANSPOSE[rank](x, w, b, backend=ranked_name, layout=layout, **params)
    expected = oracle(x, w, b, layout=layout, **params)
    assert y.dtype == dtype and y.shape == expected.shape and y.flags.c_contiguous
    assert_close(y, expected, rtol=tolerance(dtype), err_msg=f"{ranked_name} {case} {layout}")
    assert_close(y, _torch_reference(rank, x, w, b, params, layout), rtol=tolerance(dtype), err_msg="torch")


@pytest.mark.parametrize("batch", [0, 1, None])
@pytest.mark.parametrize("layout_family", ["channels first", "channels last"])
@pytest.mark.parametrize("case", ["1d-dilated-groups", "1d-blocks", "3d-asymmetric", "3d-blocks-groups"])
@pytest.mark.parametrize("ranked_name", RANKED)
def test_every_rank_batch_sizes_and_out(ranked_name, case, layout_family, batch):
    """Batch 0 and 1 and an unbatched input, without a bias, returned and written into ``out=`` (the same
    values, ``out`` itself returned), in 1-D and 3-D, both layouts."""
    _skip_without_torch(ranked_name)
    rank = len(RANK_CASES[case][2])
    layout = testbed.problem.LAYOUTS_BY_RANK[rank][layout_family == "channels last"]
    _, x, w, _, params = _rank_call(case, batch, layout, np.float64, bias=False, seed=1)
    if ranked_name == "kron" and "blocks" not in case:
        assert "stride == kernel" in testbed.get_backend("kron").unsupported_reason(
            testbed.Problem.from_shapes(x.shape, w.shape, layout=layout, **params)
        )
        return
    expected = oracle(x, w, None, layout=layout, **params)
    y = CONV_TRANSPOSE[rank](x, w, backend=ranked_name, layout=layout, **params)
    assert y.shape == expected.shape == testbed.output_shape(x.shape, w.shape, layout=layout, **params)
    assert_close(y, expected, rtol=tolerance(np.float64))
    out = np.full(expected.shape, np.nan)
    returned = CONV_TRANSPOSE[rank](x, w, backend=ranked_name, layout=layout, out=out, **params)
    assert returned is out
    if batch == 0:  # nothing to compute: the empty result, and out untouched (it is empty too)
        assert y.shape[0] == out.shape[0] == 0
    else:
        assert_close(out, expected, rtol=tolerance(np.float64))


@pytest.mark.parametrize("blocks", [(1, 1), (1, 5), (2, 4)])
@pytest.mark.parametrize("case", ["1d-dilated-groups", "3d-asymmetric", "3d-depthwise"])
def test_col2im_blocks_every_rank(monkeypatch, case, blocks):
    """col2im's column buffer computed a block of output channels and of taps at a time (as when it would
    exceed the workspace limit): every tap of a 1-D or 3-D kernel lands where one block does."""
    import testbed.backends.col2im as col2im_backend

    rank = len(RANK_CASES[case][2])
    _, x, w, b, params = _rank_call(case, 2, testbed.problem.LAYOUTS_BY_RANK[rank][0], np.float64)
    monkeypatch.setattr(col2im_backend, "_blocks", lambda problem, pixels: blocks)
    y = CONV_TRANSPOSE[rank](x, w, b, backend="col2im", **params)
    assert_close(y, oracle(x, w, b, **params), rtol=1e-12)


def test_torch_keeps_channels_last_3d():
    """NDHWC float32 goes to conv_transpose3d as PyTorch's channels_last_3d view of the same memory and comes
    back without a conversion by testbed (a C-contiguous NDHWC result equal to the NCDHW one transposed)."""
    torch = pytest.importorskip("torch")
    from testbed.backends.torch_backend import torch_conv_transpose

    _, x, w, b, params = _rank_call("3d-blocks", 2, "NDHWC", np.float32)
    problem = testbed.Problem.from_shapes(x.shape, w.shape, layout="NDHWC", dtype=np.float32, has_bias=True, **params)
    assert torch.from_numpy(x).permute(0, 4, 1, 2, 3).is_contiguous(memory_format=torch.channels_last_3d)
    y = torch_conv_transpose(x, w, b, problem)
    assert y.flags.c_contiguous and y.shape == problem.output_shape
    first = torch_conv_transpose(np.ascontiguousarray(np.moveaxis(x, -1, 1)), w, b, problem.with_(layout="NCDHW"))
    assert_close(y, np.moveaxis(first, 1, -1), rtol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_channels_last_computed_natively_where_declared(rank):
    """kron, polyphase and torch compute channels-last arrays as they come at every rank (no transposition by
    Backend.compute); col2im (Caffe's design) computes channels first and is handed converted arrays."""
    channels_first, channels_last = testbed.problem.LAYOUTS_BY_RANK[rank]
    problem = testbed.Problem(
        batch=1, in_channels=2, in_size=(3,) * rank, out_channels=2, kernel_size=2, stride=2, layout=channels_last
    )
    native = {name: testbed.get_backend(name).native_layout(problem) for name in RANKED}
    assert native == {
        "col2im": channels_first,
        "kron": channels_last,
        "polyphase": channels_last,
        "torch": channels_last,
    }
