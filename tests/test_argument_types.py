"""The types of the arguments: pairs (stride, padding, dilation, output_padding, output_size) accept only ints
and int sequences in any spelling, masked arrays are refused, and non-native byte order is converted."""

import sys

import numpy as np
import pytest

import testbed
from helpers import run_or_skip
from testbed.testing import relative_error

X = np.random.default_rng(2).standard_normal((1, 2, 4, 5))
W = np.random.default_rng(3).standard_normal((2, 3, 3, 2))


@pytest.mark.parametrize("argument", ["stride", "padding", "dilation", "output_padding"])
@pytest.mark.parametrize(
    "value",
    [
        {3, 2},
        {3: 1, 2: 1},
        b"ab",
        "ab",
        (v for v in (2, 1)),
        range(1, 3),
        2.0,
        (2, 1.0),
        (True, 1),
        np.array([[2, 1]]),
        np.array([2.0, 1.0]),
        None,
    ],
    ids=[
        "set",
        "dict",
        "bytes",
        "str",
        "generator",
        "range",
        "float",
        "float_item",
        "bool_item",
        "2d_array",
        "float_array",
        "none",
    ],
)
def test_pairs_accept_only_ints_and_int_sequences(argument, value):
    """Before: any 2-item iterable was a pair: ``stride={3, 2}`` ran as (2, 3), a dict's keys or bytes too."""
    with pytest.raises(TypeError, match=argument):
        testbed.conv_transpose2d(X, W, stride=2, **{argument: value})


def test_pairs_as_tuple_list_array_numpy_ints_and_torch_size_agree():
    expected = testbed.conv_transpose2d(X, W, stride=(3, 2), padding=(1, 0), backend="naive")
    spellings = [[3, 2], np.array([3, 2]), np.array([3, 2], dtype=np.uint8), (np.int64(3), np.int32(2))]
    try:
        import torch

        spellings.append(torch.Size([3, 2]))
    except ImportError:
        pass
    for stride in spellings:
        got = testbed.conv_transpose2d(X, W, stride=stride, padding=[np.int16(1), 0], backend="naive")
        assert np.array_equal(got, expected), stride
    with pytest.raises(TypeError, match="output_size"):
        testbed.conv_transpose2d(X, W, stride=2, output_size={9, 10})
    assert testbed.conv_transpose2d(X, W, stride=2, output_size=np.array([10, 10])).shape == (1, 3, 10, 10)


@pytest.mark.parametrize("argument", ["input", "weight", "bias"])
def test_masked_arrays_are_refused(argument):
    """Before: np.asarray dropped the mask and the masked values were used silently."""
    arrays = dict(input=X, weight=W, bias=np.ones(3))
    arrays[argument] = np.ma.masked_less(arrays[argument], 0)
    with pytest.raises(TypeError, match=f"{argument} is a masked array"):
        testbed.conv_transpose2d(arrays["input"], arrays["weight"], arrays["bias"], stride=2)


def test_non_native_byte_order_is_converted(backend):
    swapped = {
        name: a.astype(a.dtype.newbyteorder(">" if sys.byteorder == "little" else "<"))
        for name, a in (("x", X), ("w", W), ("b", np.arange(3.0)))
    }
    y = run_or_skip(backend, swapped["x"], swapped["w"], swapped["b"], stride=2, padding=1)
    assert y.dtype == np.float64 and y.dtype.isnative
    expected = testbed.conv_transpose2d(X, W, np.arange(3.0), stride=2, padding=1, backend="naive")
    assert relative_error(y, expected) < 1e-12
