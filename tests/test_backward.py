"""The backward pass (:func:`testbed.conv_transpose_backward`) of every backend that declares a direction, at every
spatial rank: parity with PyTorch's autograd and with the ``naive`` oracle on a grid (odd sizes, asymmetric
parameters, groups, depthwise, output_padding, dilation, both layouts, batch 0/1/3, unbatched); the adjoint and
bilinearity identities of each gradient; ``output_mask``; ``out=``; the direction in the registry, ``auto`` and
wisdom; bad input naming the argument.

A backend is never compared with itself: ``torch`` (which runs autograd's own ``convolution_backward``) is not
parametrised for the autograd test, nor ``naive`` for the oracle test."""

import itertools

import numpy as np
import pytest

import testbed
from testbed import planner, wisdom
from testbed.backends.naive import correlate_weight_gradient, gather_data_gradient
from testbed.registry import DIRECTIONS
from testbed.testing import assert_close, relative_error, tolerance

#: Which gradient each backward direction computes (the index in conv_transpose_backward's result).
ENTRY = {"backward_data": 0, "backward_weight": 1}

# (name, batch, C_in, C_out, spatial size, kernel, params): ranks 1, 2, 3; odd sizes, asymmetric parameters,
# groups, depthwise, output_padding, dilation, padding that crops into the kernel's reach.
GRID = [
    ("1d_k16s8p4", 2, 4, 3, (5,), (16,), dict(stride=8, padding=4)),
    ("1d_groups_dil_op", 3, 4, 6, (7,), (3,), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)),
    ("1d_depthwise", 1, 5, 5, (6,), (4,), dict(stride=2, padding=1, groups=5)),
    ("2d_unet_k2s2", 2, 4, 3, (5, 7), (2, 2), dict(stride=2)),
    ("2d_k3s2p1op1", 3, 3, 5, (6, 5), (3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("2d_asym_groups", 1, 4, 6, (5, 6), (3, 4), dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=2)),
    ("2d_depthwise_mult", 2, 3, 6, (4, 5), (3, 2), dict(stride=(1, 2), groups=3)),
    ("2d_dilated_op", 1, 2, 3, (3, 4), (2, 3), dict(stride=(3, 2), output_padding=(2, 1), dilation=(3, 2))),
    ("2d_big_padding", 2, 3, 2, (6, 6), (3, 3), dict(stride=2, padding=3)),
    ("3d_k2s2", 2, 3, 2, (3, 2, 3), (2, 2, 2), dict(stride=2)),
    ("3d_asym", 1, 4, 2, (3, 4, 2), (3, 2, 2), dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 2))),
    ("3d_groups_dil", 3, 4, 4, (2, 3, 3), (2, 3, 2), dict(stride=1, padding=1, groups=2, dilation=(1, 2, 2))),
]
GRID_IDS = [case[0] for case in GRID]
CHANNELS_LAST = {1: "NLC", 2: "NHWC", 3: "NDHWC"}


def arrays(case, dtype=np.float64, seed=0, batch=None):
    """``(grad_output, x, w, params)`` of a grid case, channels first, standard normal."""
    _, n, c_in, c_out, size, kernel, params = case
    n = n if batch is None else batch
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, *size)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // params.get("groups", 1), *kernel)).astype(dtype)
    grad_output = rng.standard_normal(testbed.output_shape(x.shape, w.shape, **params)).astype(dtype)
    return grad_output, x, w, params


def problem_of(x, w, params, layout=None):
    return testbed.Problem.from_shapes(x.shape, w.shape, dtype=x.dtype, layout=layout, **params)


def to_layout(array, layout):
    """A channels-first batched array in ``layout`` (channels last: the channel axis moved to the end)."""
    return np.ascontiguousarray(np.moveaxis(array, 1, -1)) if layout.endswith("C") else array


def from_layout(array, layout):
    return np.moveaxis(array, -1, 1) if layout.endswith("C") else array


def torch_autograd(grad_output, x, w, params):
    """``(grad_input, grad_weight, grad_bias)`` by PyTorch's autograd through ``conv_transpose{1,2,3}d``, float64."""
    torch = pytest.importorskip("torch")
    rank = w.ndim - 2
    forward = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d}.get(
        rank, torch.nn.functional.conv_transpose3d
    )
    x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w_t = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    b_t = torch.zeros(w.shape[1] * params.get("groups", 1), dtype=torch.float64, requires_grad=True)
    forward(x_t, w_t, b_t, **params).backward(torch.tensor(grad_output, dtype=torch.float64))
    return x_t.grad.numpy(), w_t.grad.numpy(), b_t.grad.numpy()


def directions_or_skip(backend, problem):
    """The backward directions ``backend`` computes for ``problem``; skip where it declares none."""
    declared = [d for d in ENTRY if backend.supports(problem, d)]
    if not declared:
        reasons = {d: backend.unsupported_reason(problem, d) for d in ENTRY}
        pytest.skip(f"{backend.name} declares no backward direction for this problem: {reasons}")
    return declared


def backward(backend, grad_output, x, w, params, directions, layout=None, **kwargs):
    mask = ("backward_data" in directions, "backward_weight" in directions, True)
    return testbed.conv_transpose_backward(
        grad_output, x, w, **params, output_mask=mask, backend=backend.name, layout=layout, **kwargs
    )


def check_against(reference, backend, case, dtype, layout):
    grad_output, x, w, params = arrays(case, dtype)
    rank = w.ndim - 2
    layout = {"first": None, "last": CHANNELS_LAST[rank]}[layout]
    problem = problem_of(x, w, params)
    directions = directions_or_skip(backend, problem.with_(layout=layout or problem.layout))
    got = backward(
        backend, to_layout(grad_output, layout or ""), to_layout(x, layout or ""), w, params, directions, layout
    )
    widened = [a.astype(np.float64) for a in (grad_output, x, w)]
    want = reference(*widened, params)
    for direction in directions:
        index = ENTRY[direction]
        actual = from_layout(got[index], layout or "") if index == 0 else got[index]
        assert actual.dtype == np.dtype(dtype)
        assert_close(actual, want[index], err_msg=f"{backend.name} {direction}")
    assert_close(got.grad_bias, want[2], err_msg="grad_bias")


#: float64 in both layouts, float32 in one: the dtype and the layout are independent paths through every backend.
DTYPE_LAYOUTS = [(np.float64, "first"), (np.float64, "last"), (np.float32, "first")]


@pytest.mark.reference_backends("torch")
@pytest.mark.parametrize("dtype, layout", DTYPE_LAYOUTS, ids=["float64-first", "float64-last", "float32-first"])
@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_matches_torch_autograd(backend, case, dtype, layout):
    """Relative L2 error against autograd's float64 gradients below 1e-12 (float64) / 1e-5 (float32)."""
    if backend.name == "auto":
        _, x, w, params = arrays(case, dtype)
        problem = problem_of(x, w, params)
        if any(planner.choose_backend(problem, False, d).name == "torch" for d in ENTRY):
            pytest.skip("auto dispatches this case to torch: it would be compared with itself")
    check_against(torch_autograd, backend, case, dtype, layout)


def held_out_case(rank, seed):
    """A random valid configuration of ``rank`` (not on the grid): batch 0-3, groups 1-2, per-axis sizes, kernels,
    strides, dilations, paddings and output paddings drawn independently; redrawn until the output is non-empty."""
    rng = np.random.default_rng(1000 * rank + seed)
    while True:
        groups = int(rng.integers(1, 3))
        kernel = tuple(int(k) for k in rng.integers(1, 5, rank))
        stride = tuple(int(s) for s in rng.integers(1, 4, rank))
        dilation = tuple(int(d) for d in rng.integers(1, 3, rank))
        padding = tuple(int(rng.integers(0, d * (k - 1) + 1)) for k, d in zip(kernel, dilation))
        output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        size = tuple(int(n) for n in rng.integers(1, 6, rank))
        params = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
        c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        try:
            testbed.Problem(batch=1, in_channels=c_in, in_size=size, out_channels=c_out, kernel_size=kernel, **params)
        except ValueError:
            continue  # an empty output: draw again
        return (f"held_out_{rank}d_{seed}", int(rng.integers(0, 4)), c_in, c_out, size, kernel, params)


HELD_OUT = [held_out_case(rank, seed) for rank in (1, 2, 3) for seed in range(5)]


@pytest.mark.reference_backends("torch")
@pytest.mark.parametrize("case", HELD_OUT, ids=[case[0] for case in HELD_OUT])
def test_held_out_random_configurations_match_torch_autograd(backend, case):
    """Configurations drawn at random (seeded; none was used to write a backend) against autograd, float64."""
    if backend.name == "auto":
        pytest.skip("auto's choices are the other backends, each checked here")
    check_against(torch_autograd, backend, case, np.float64, "first")


def naive_gradients(grad_output, x, w, params):
    """The oracle's gradients: ``naive``'s own functions, float64, channels first."""
    problem = problem_of(x, w, params)
    bias = grad_output.sum(axis=(0, *range(2, grad_output.ndim)))
    return gather_data_gradient(grad_output, w, problem), correlate_weight_gradient(grad_output, x, problem), bias


@pytest.mark.reference_backends("naive")
@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_matches_oracle(backend, case, layout):
    check_against(naive_gradients, backend, case, np.float64, layout)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_batch_sizes_and_unbatched(backend, batch):
    """Every image's gradient is its own (the weight gradient sums them), an unbatched call is a batch of one,
    and an empty batch gives an empty grad_input and zero weight and bias gradients."""
    case = GRID[4]
    grad_output, x, w, params = arrays(case, batch=batch)
    directions = directions_or_skip(backend, problem_of(x, w, params))
    got = backward(backend, grad_output, x, w, params, directions)
    if "backward_data" in directions:
        assert got.grad_input.shape == x.shape
        for n in range(batch):
            alone = backward(backend, grad_output[n], x[n], w, params, directions)
            assert alone.grad_input.shape == x.shape[1:]
            assert_close(alone.grad_input, got.grad_input[n])
    if "backward_weight" in directions:
        assert got.grad_weight.shape == w.shape
        if batch == 0:
            assert not got.grad_weight.any() and not got.grad_bias.any()
        else:
            parts = [backward(backend, grad_output[n], x[n], w, params, directions).grad_weight for n in range(batch)]
            assert_close(sum(parts), got.grad_weight)


@pytest.mark.parametrize("case", [GRID[1], GRID[5], GRID[10]], ids=["1d", "2d", "3d"])
def test_adjoint_identities(backend, case):
    """``<conv_transpose(x, W), g> = <x, grad_input(g)> = <W, grad_weight(g, x)>`` (the forward is linear in x and
    in W) and ``<b, grad_bias(g)>`` is the bias's share of ``<y, g>``: each gradient is the adjoint of the
    forward in its argument, whatever algorithm computes it."""
    grad_output, x, w, params = arrays(case)
    rank = w.ndim - 2
    directions = directions_or_skip(backend, problem_of(x, w, params))
    forward = getattr(testbed, f"conv_transpose{rank}d")
    y = forward(x, w, **params, backend="naive")
    got = backward(backend, grad_output, x, w, params, directions)
    inner = float(np.vdot(y, grad_output))
    scale = float(np.linalg.norm(y) * np.linalg.norm(grad_output))
    if "backward_data" in directions:
        assert abs(np.vdot(x, got.grad_input) - inner) <= 1e-12 * scale
    if "backward_weight" in directions:
        assert abs(np.vdot(w, got.grad_weight) - inner) <= 1e-12 * scale
    b = np.random.default_rng(5).standard_normal(y.shape[1])
    with_bias = forward(x, w, b, **params, backend="naive")
    assert abs(np.vdot(b, got.grad_bias) - (np.vdot(with_bias, grad_output) - inner)) <= 1e-12 * scale * 10


@pytest.mark.parametrize("case", [GRID[1], GRID[6], GRID[11]], ids=["1d", "2d", "3d"])
def test_bilinearity(backend, case):
    """grad_input is linear in grad_output; grad_weight is linear in grad_output and in the input."""
    g1, x1, w, params = arrays(case, seed=1)
    g2, x2, _, _ = arrays(case, seed=2)
    a, c = 0.75, -1.5
    directions = directions_or_skip(backend, problem_of(x1, w, params))

    def grads(g, x):
        return backward(backend, g, x, w, params, directions)

    mixed_g, one, two = grads(a * g1 + c * g2, x1), grads(g1, x1), grads(g2, x1)
    if "backward_data" in directions:
        assert_close(mixed_g.grad_input, a * one.grad_input + c * two.grad_input)
    if "backward_weight" in directions:
        assert_close(mixed_g.grad_weight, a * one.grad_weight + c * two.grad_weight)
        mixed_x, other = grads(g1, a * x1 + c * x2), grads(g1, x2)
        assert_close(mixed_x.grad_weight, a * one.grad_weight + c * other.grad_weight)


@pytest.mark.parametrize("mask", list(itertools.product([False, True], repeat=3)))
def test_output_mask(mask):
    """Every combination: None exactly where not asked, the same values as the full call elsewhere."""
    grad_output, x, w, params = arrays(GRID[5])
    full = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive")
    got = testbed.conv_transpose_backward(grad_output, x, w, **params, output_mask=mask, backend="naive")
    assert isinstance(got, testbed.Gradients) and len(got) == 3
    for wanted, value, reference in zip(mask, got, full):
        if wanted:
            np.testing.assert_array_equal(value, reference)
        else:
            assert value is None


def test_out_preallocated():
    """``out=(gi, gw, gb)`` receives the results and is returned; None entries are allocated; the layout's
    grad_input goes into a channels-last ``out``."""
    grad_output, x, w, params = arrays(GRID[4])
    full = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive")
    out = (np.empty_like(x), np.empty_like(w), np.empty(w.shape[1], x.dtype))
    got = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive", out=out)
    assert all(g is o for g, o in zip(got, out))
    for g, f in zip(got, full):
        np.testing.assert_array_equal(g, f)
    partial = testbed.conv_transpose_backward(
        grad_output, x, w, **params, backend="naive", out=testbed.Gradients(None, np.empty_like(w), None)
    )
    np.testing.assert_array_equal(partial.grad_weight, full.grad_weight)
    last = testbed.conv_transpose_backward(
        to_layout(grad_output, "NHWC"), to_layout(x, "NHWC"), w, **params, backend="naive", layout="NHWC",
        out=(np.empty_like(to_layout(x, "NHWC")), None, None), output_mask=(True, False, False),
    )  # fmt: skip
    np.testing.assert_allclose(from_layout(last.grad_input, "NHWC"), full.grad_input, rtol=1e-13)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(grad_output=np.zeros((3, 5, 12, 9))), ValueError, r"grad_output must have the forward's output shape "
         r"\(3, 5, 12, 10\) \(layout NCHW\), got \(3, 5, 12, 9\)"),
        (dict(grad_output=np.zeros((3, 5, 12, 10), np.float32)), TypeError, "grad_output dtype"),
        (dict(grad_output="g"), TypeError, "grad_output must be a real numeric array"),
        (dict(weight=np.zeros((4, 5, 3, 3))), ValueError, r"weight.shape\[0\] \(4\) must equal"),
        (dict(stride=0), ValueError, "stride must be positive"),
        (dict(output_mask=(True, False)), TypeError, "output_mask must be a sequence of 3 bools"),
        (dict(output_mask=(1, 0, 1)), TypeError, "output_mask must be a sequence of 3 bools"),
        (dict(out=np.zeros(3)), TypeError, "out must be a 3-tuple"),
        (dict(out=(np.zeros((3, 3, 6, 4)), None, None)), ValueError,
         r"out.grad_input must have grad_input's shape \(3, 3, 6, 5\), got \(3, 3, 6, 4\)"),
        (dict(out=(None, np.zeros((3, 5, 3, 2)), None)), ValueError,
         r"out.grad_weight must have grad_weight's shape \(3, 5, 3, 3\), got \(3, 5, 3, 2\)"),
        (dict(out=(None, None, np.zeros(5, np.float32))), TypeError, "out.grad_bias must have the result's dtype"),
        (dict(output_mask=(False, True, True), out=(np.zeros((3, 3, 6, 5)), None, None)), ValueError,
         "out.grad_input is given but output_mask does not ask for grad_input"),
        (dict(backend="fft_nonexistent"), ValueError, "backend must be one of"),
        (dict(layout="NCL"), ValueError, "layout must be one of"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(change, error, match):
    grad_output, x, w, params = arrays(GRID[4])
    call = dict(grad_output=grad_output, input=x, weight=w, backend="naive", **params) | change
    with pytest.raises(error, match=match):
        testbed.conv_transpose_backward(**call)


def test_out_sharing_memory_is_refused():
    grad_output, x, w, params = arrays(GRID[4])
    with pytest.raises(ValueError, match=r"out\.grad_input must not share memory with input"):
        testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive", out=(x, None, None))
    shared = np.zeros(w.size * 2, w.dtype)
    outs = (None, shared[: w.size].reshape(w.shape), shared[: w.shape[1]])
    with pytest.raises(ValueError, match=r"must not share memory with out\.grad_"):
        testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive", out=outs)


def test_inputs_are_not_modified(backend):
    grad_output, x, w, params = arrays(GRID[4])
    directions = directions_or_skip(backend, problem_of(x, w, params))
    copies = [a.copy() for a in (grad_output, x, w)]
    for a in (grad_output, x, w):
        a.flags.writeable = False  # read-only arrays work, and a write would raise
    backward(backend, grad_output, x, w, params, directions)
    for a, c in zip((grad_output, x, w), copies):
        np.testing.assert_array_equal(a, c)


# ---- the direction in the registry, auto and wisdom ---------------------------------------------------------------


def forward_only_backend():
    naive = testbed.get_backend("naive")
    return testbed.Backend(name="forward_only", description="a forward without backward", run=naive.run)


def test_directions_are_declared_and_refused_by_name():
    fwd = forward_only_backend()
    assert fwd.directions == ("forward",)
    assert testbed.get_backend("naive").directions == DIRECTIONS
    grad_output, x, w, params = arrays(GRID[4])
    problem = problem_of(x, w, params)
    assert fwd.unsupported_reason(problem, "backward_weight").startswith(
        "the backward_weight direction is not implemented (it computes forward)"
    )
    with pytest.raises(ValueError, match="direction must be one of"):
        fwd.unsupported_reason(problem, "sideways")
    with pytest.raises(testbed.UnsupportedConfiguration, match="the backward_data direction is not implemented"):
        testbed.conv_transpose_backward(grad_output, x, w, **params, backend=fwd)
    # the bias gradient needs no backend direction, and only the asked directions are checked
    only_bias = testbed.conv_transpose_backward(
        grad_output, x, w, **params, backend=fwd, output_mask=(False, False, True)
    )
    assert only_bias.grad_input is None and only_bias.grad_bias.shape == (w.shape[1],)
    with pytest.raises(ValueError, match="direction must be one of"):
        testbed.resolve_backend(x, w, **params, direction="backwards")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_auto_chooses_per_direction(direction, wisdom_file):
    """The class rule filtered to the backends that declare the direction; wisdom per direction, whose signature
    names the backward directions (the forward's is unchanged)."""
    _, x, w, params = arrays(GRID[4])
    problem = problem_of(x, w, params)
    chosen = testbed.resolve_backend(x, w, **params, direction=direction)
    assert direction in chosen.directions and chosen.supports(problem, direction)
    assert chosen is planner.rule_backend(problem, False, direction)
    signature = wisdom.signature(problem, "cpu", direction)
    assert signature.endswith("cpu" if direction == "forward" else f"cpu {direction}")
    other = "naive" if chosen.name != "naive" else "torch"
    wisdom.record(problem, "cpu", {"backend": other}, direction)
    assert testbed.resolve_backend(x, w, **params, direction=direction).name == other
    assert testbed.explain(x, w, **params, direction=direction).reason == "wisdom"
    for elsewhere in set(DIRECTIONS) - {direction}:  # wisdom of one direction is not another's
        assert testbed.explain(x, w, **params, direction=elsewhere).reason == "rule"


def test_backward_follows_use_backend():
    grad_output, x, w, params = arrays(GRID[4])
    with testbed.use_backend(forward_only_backend()):
        with pytest.raises(testbed.UnsupportedConfiguration, match="forward_only"):
            testbed.conv_transpose_backward(grad_output, x, w, **params)


def test_float32_stays_float32():
    grad_output, x, w, params = arrays(GRID[4], np.float32)
    got = testbed.conv_transpose_backward(grad_output, x, w, **params, backend="naive")
    assert {g.dtype for g in got} == {np.dtype(np.float32)}
    assert relative_error(got.grad_bias, grad_output.astype(np.float64).sum(axis=(0, 2, 3))) <= tolerance(np.float32)


# ---- the PyTorch bridge (testbed.torch) ---------------------------------------------------------------------------


def bridge_or_skip():
    pytest.importorskip("torch")
    import testbed.torch as bridge

    return bridge


def both_directions_or_skip(backend, rank):
    """Skip unless ``backend`` computes forward and both gradients of a small problem of ``rank``."""
    problem = testbed.Problem(batch=1, in_channels=2, in_size=(3,) * rank, out_channels=2, kernel_size=2, stride=2)
    missing = {d: backend.unsupported_reason(problem, d) for d in DIRECTIONS if not backend.supports(problem, d)}
    if missing:
        pytest.skip(f"{backend.name} does not compute every direction at rank {rank}: {missing}")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_bridge_gradcheck(backend, rank):
    """``torch.autograd.gradcheck`` (float64, finite differences against the backward) of the bridge's module and
    of its function in all three arguments, with groups, padding, output_padding and dilation, on each backend that
    computes every direction. The function's check is gradcheck's fast mode (random projections of the Jacobian:
    one backward per input instead of one per output element), the module's the full Jacobian."""
    bridge = bridge_or_skip()
    import torch

    both_directions_or_skip(backend, rank)
    module = getattr(bridge, f"ConvTranspose{rank}d")
    layer = module(
        4, 2, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=(2, 1, 1)[:rank], backend=backend.name
    )
    layer = layer.double()
    size = (3, 2, 2)[:rank] if rank < 3 else (2, 1, 2)
    x = torch.randn(1, 4, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
    x.requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))
    weight, bias = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()

    def functional(x, weight, bias):
        return bridge.conv_transpose(x, weight, bias, 2, 1, 1, 2, layer.dilation, backend=backend.name)

    assert torch.autograd.gradcheck(functional, (x, weight, bias), fast_mode=True)


def test_bridge_loads_torch_state_dict_and_matches_its_module():
    """A state dict saved from ``torch.nn.ConvTranspose2d`` loads unchanged; forward (also with ``output_size``),
    the gradients, the keys and ``repr`` are PyTorch's, and a channels-last input stays channels last."""
    bridge = bridge_or_skip()
    import io

    import torch

    reference = torch.nn.ConvTranspose2d(6, 4, (3, 2), stride=(2, 3), padding=(1, 0), groups=2, dilation=(1, 2))
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    buffer.seek(0)
    layer = bridge.ConvTranspose2d(
        6, 4, (3, 2), stride=(2, 3), padding=(1, 0), groups=2, dilation=(1, 2), backend="naive"
    )
    assert layer.load_state_dict(torch.load(buffer)) is not None
    assert list(layer.state_dict()) == list(reference.state_dict()) == ["weight", "bias"]
    assert isinstance(layer, torch.nn.ConvTranspose2d) and "backend='naive'" in repr(layer)
    x = torch.randn(2, 6, 5, 4)
    for output_size in (None, (10, 12), [2, 4, 10, 13]):
        torch.testing.assert_close(layer(x, output_size), reference(x, output_size), rtol=1e-5, atol=1e-6)
    last = x.to(memory_format=torch.channels_last).requires_grad_()
    y = layer(last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.square().sum().backward()
    plain = x.clone().requires_grad_()
    reference(plain).square().sum().backward()
    torch.testing.assert_close(last.grad, plain.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="requested an output size of"):
        layer(x, output_size=(40, 40))  # PyTorch's own message for an unreachable size


def decoder(layers, rank):
    import torch

    first, second = layers
    return torch.nn.Sequential(
        first(8, 4, 2, stride=2), torch.nn.ReLU(), second(4, 2, 3, stride=2, padding=1, output_padding=1)
    )


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_decoder_training_step_matches_torch(backend, rank):
    """Two SGD steps of a two-layer decoder (up-convolutions, ReLU, MSE) with the bridge's layers on ``backend``
    reach torch's own layers' losses and weights (float64, from the same state dict)."""
    bridge = bridge_or_skip()
    import torch

    both_directions_or_skip(backend, rank)
    mine_cls = getattr(bridge, f"ConvTranspose{rank}d")
    theirs_cls = getattr(torch.nn, f"ConvTranspose{rank}d")
    torch.manual_seed(0)
    theirs = decoder((theirs_cls, theirs_cls), rank).double()
    with testbed.use_backend(backend):
        mine = decoder((mine_cls, mine_cls), rank).double()
        mine.load_state_dict(theirs.state_dict())
        x = torch.randn(3, 8, *(4, 3, 2)[:rank], dtype=torch.float64)
        target = torch.randn(theirs(x).shape, dtype=torch.float64)
        losses = {}
        for name, model in (("mine", mine), ("theirs", theirs)):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            losses[name] = []
            for _ in range(2):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), target)
                loss.backward()
                optimizer.step()
                losses[name].append(loss.item())
    np.testing.assert_allclose(losses["mine"], losses["theirs"], rtol=1e-12)
    assert losses["mine"][1] < losses["mine"][0]
    for (key, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=key)


def test_bridge_refuses_and_import_fails_clearly_without_torch():
    from helpers import run_python

    result = run_python(
        """
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        try:
            import testbed.torch
        except ImportError as exc:
            print(exc)
        """
    )
    assert "testbed.torch needs PyTorch, which is not installed: pip install" in result.stdout, result.stderr
    bridge = bridge_or_skip()
    import torch

    with pytest.raises(TypeError, match=r"weight dtype \(float64\) must match the input dtype \(float32\)"):
        bridge.conv_transpose(torch.ones(1, 2, 3), torch.ones(2, 1, 2, dtype=torch.float64))


@pytest.mark.parametrize("isolation", ["inline", "interleaved", "process"])
def test_tune_times_a_direction_and_stores_its_wisdom(isolation, wisdom_file):
    """``tune(direction=...)`` times only the backends declaring the direction, on that gradient, and stores the
    winner under the direction's signature; the forward's wisdom is untouched and auto follows each."""
    from testbed.timing import TimingSettings, prepare_call

    _, x, w, params = arrays(GRID[4], np.float32)
    problem = problem_of(x, w, params)
    settings = TimingSettings.quick()
    forward_only = forward_only_backend()
    candidates = ["naive", "col2im", forward_only]
    result = testbed.tune(
        x, w, **params, direction="backward_weight", candidates=candidates, isolation=isolation, settings=settings
    )
    assert result.signature == wisdom.signature(problem, "cpu", "backward_weight")
    assert sorted(result.medians_s) == ["col2im", "naive"] and result.winner in ("col2im", "naive")
    assert result.timing("forward_only").status == "unsupported"
    assert "backward_weight direction is not implemented" in result.timing("forward_only").message
    assert wisdom.lookup(problem, "cpu", "backward_weight")["backend"] == result.winner
    assert wisdom.lookup(problem) is None and wisdom.lookup(problem, "cpu", "backward_data") is None
    assert testbed.resolve_backend(x, w, **params, direction="backward_weight").name == result.winner
    # what is timed is the gradient itself: the prepared call returns it
    gradients = prepare_call("col2im", problem, x, w, None, "out", "backward_weight")()
    assert gradients.grad_input is None and gradients.grad_bias is None and gradients.grad_weight.shape == w.shape
