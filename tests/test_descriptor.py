"""Case descriptors: printing, parsing, round trips and errors."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from experiments.harness.descriptor import PROBLEM_COLUMNS, format_descriptor, parse_descriptor, problem_columns
from testbed.cases import SUITES
from testbed.problem import Problem

small = st.integers(1, 5)


@st.composite
def problems(draw):
    """A valid problem of any spatial rank (1, 2 or 3), every per-axis parameter drawn per axis."""
    rank = draw(st.sampled_from([1, 2, 3]))

    def per_axis(values):
        return draw(st.tuples(*[values] * rank))

    groups = draw(st.integers(1, 3))
    try:
        return Problem(
            batch=draw(st.integers(0, 3)),
            in_channels=groups * draw(small),
            in_size=per_axis(st.integers(1, 40 if rank < 3 else 9)),
            out_channels=groups * draw(small),
            kernel_size=per_axis(small),
            stride=per_axis(small),
            padding=per_axis(st.integers(0, 3)),
            output_padding=per_axis(st.integers(0, 4)),
            dilation=per_axis(small),
            groups=groups,
            dtype=draw(st.sampled_from([np.float32, np.float64])),
            has_bias=draw(st.booleans()),
            rank=rank,
        )
    except ValueError:
        assume(False)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_round_trip_of_random_valid_problems(problem):
    text = format_descriptor(problem)
    assert parse_descriptor(text, dtype=problem.dtype, has_bias=problem.has_bias) == problem
    assert format_descriptor(parse_descriptor(text, dtype=problem.dtype)) == text


@pytest.mark.parametrize("name,problem", [(n, p) for s in SUITES.values() for n, p in s.items()])
def test_round_trip_of_every_named_case(name, problem):
    assert parse_descriptor(format_descriptor(problem)) == problem


def test_the_unet_example_and_omitted_defaults():
    unet1 = SUITES["unet"]["unet1"]
    assert format_descriptor(unet1) == "mb1ic1024ih28oc512kh2sh2"
    problem = Problem(
        batch=2,
        in_channels=4,
        in_size=(5, 7),
        out_channels=6,
        kernel_size=(3, 2),
        stride=(1, 2),
        padding=(1, 1),
        output_padding=(0, 1),
        dilation=(2, 2),
        groups=2,
    )
    assert format_descriptor(problem) == "g2mb2ic4ih5iw7oc6kh3kw2sh1sw2ph1oph0opw1dh2"


def test_the_rank_is_benchdnns_depth_height_or_width_only():
    """3-D names its depth (height and width default to it), 2-D its height, 1-D only its width."""
    voc1, unet3d1 = SUITES["vocoder1d"]["voc1"], SUITES["unet3d"]["unet3d1"]
    assert format_descriptor(voc1) == "mb1ic512iw86oc256kw16sw8pw4"
    assert format_descriptor(unet3d1) == "mb2ic320id4oc320kd2sd2"
    assert parse_descriptor("ic2id3ih4oc2kd2kw3sh2").in_size == (3, 4, 4)
    problem = parse_descriptor("ic2id3ih4oc2kd2kw3sh2")
    assert (problem.rank, problem.kernel_size, problem.stride, problem.layout) == (3, (2, 2, 3), (1, 2, 2), "NCDHW")
    assert parse_descriptor("ic2iw9oc2kw3").rank == 1
    assert parse_descriptor("ic2ih9oc2kh3sw2").stride == (1, 2)


def test_dilation_is_pytorch_convention_one_means_none():
    assert parse_descriptor("ic1ih4oc1kh3dh1").dilation == (1, 1)
    assert parse_descriptor("ic1ih4oc1kh3dh2").dilation == (2, 2)
    assert "dh" not in format_descriptor(parse_descriptor("ic1ih4oc1kh3dh1"))


def test_benchdnn_style_underscores_and_missing_batch_are_accepted():
    problem = parse_descriptor("ic4ih8_oc4kh2sh2", dtype=np.float64)
    assert problem.batch == 1 and problem.stride == (2, 2) and problem.dtype == np.float64


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "malformed descriptor ''"),
        ("mb1ic4", "missing required field(s) ih, oc, kh"),
        ("ic4ih8oc4kh2x3", "cannot read a field at 'x3'"),
        ("ic4ih8oc4kh2sh", "cannot read a field at 'sh'"),
        ("ic4ic4ih8oc4kh2", "field 'ic' appears twice"),
        ("g3ic4ih8oc4kh2", "does not name a valid problem"),
        ("ic4ih8oc4kh2oph2", "does not name a valid problem"),
        ("IC4ih8oc4kh2", "malformed descriptor 'IC4ih8oc4kh2'"),
        ("ic4iw8oc4kh2", "missing required field(s) ih"),  # kh makes it 2-D, whose height is missing
        ("ic4ih8oc4kh2kd2", "missing required field(s) id"),
        ("ic4iw8oc4", "missing required field(s) kw"),
    ],
)
def test_malformed_descriptors_raise_value_error_naming_them(text, needle):
    with pytest.raises(ValueError) as info:
        parse_descriptor(text)
    assert needle in str(info.value)
    assert repr(text) in str(info.value)


def test_non_string_descriptor_is_a_type_error():
    with pytest.raises(TypeError, match="descriptor must be a str"):
        parse_descriptor(42)


def test_problem_columns_hold_every_parameter():
    problem = SUITES["tiny"]["tiny_g2d2"]
    row = problem_columns(problem)
    assert tuple(row) == PROBLEM_COLUMNS
    assert (row["stride_h"], row["stride_w"], row["dilation_h"], row["groups"]) == (1, 2, 2, 2)
    assert (row["out_h"], row["out_w"]) == problem.out_size
    assert (row["rank"], row["layout"], row["in_d"], row["kernel_d"]) == (2, "NCHW", None, None)


def test_problem_columns_of_other_ranks():
    """A 1-D problem's one axis is its width; a 3-D one fills the depth columns; the layout is the problem's."""
    voc1 = problem_columns(SUITES["vocoder1d"]["voc1"].with_(layout="NLC"))
    assert (voc1["rank"], voc1["layout"], voc1["in_w"], voc1["out_w"], voc1["stride_w"]) == (1, "NLC", 86, 688, 8)
    assert voc1["in_h"] is None and voc1["in_d"] is None
    unet3d = problem_columns(SUITES["unet3d"]["unet3d5"])
    assert (unet3d["rank"], unet3d["layout"]) == (3, "NCDHW")
    assert (unet3d["in_d"], unet3d["in_h"], unet3d["in_w"], unet3d["out_d"], unet3d["kernel_d"]) == (64, 64, 64, 128, 2)
