"""Case descriptors in the spirit of oneDNN benchdnn (``tests/benchdnn/doc/driver_conv.md``).

A descriptor is one string naming every shape parameter of a :class:`~testbed.problem.Problem`, e.g.
``mb1ic1024ih28oc512kh2sh2`` (the first U-Net up-convolution). Fields, in printing order (``*`` is the spatial
axis: ``d``, ``h``, ``w``):

=====  ==============================================  =================================
field  meaning                                         omitted when
=====  ==============================================  =================================
g      groups                                          1
mb     batch                                           never (parsing defaults it to 1)
ic     input channels                                  never
i*     input depth / height / width                    equal to the previous axis
oc     output channels                                 never
k*     kernel size                                     equal to the previous axis
s*     stride                                          every axis 1 (later axes: = previous)
p*     padding                                         every axis 0 (later axes: = previous)
op*    output padding                                  every axis 0 (later axes: = previous)
d*     dilation, **PyTorch convention: 1 = none**      every axis 1 (later axes: = previous)
=====  ==============================================  =================================

The spatial rank is benchdnn's: a 3-D problem names its depth (``mb2ic64id64oc32kd2sd2``: ``id`` and ``kd``,
the height and width default to the depth), a 2-D one its height (``ih``, ``kh``), a 1-D one only its width
(``mb1ic512iw86oc256kw16sw8pw4``: ``iw``, ``kw``); a descriptor without any spatial field is read as 2-D (and
refused for its missing ``ih``/``kh``). So the width is the last axis at every rank, in the descriptor and in
the result columns (:data:`PROBLEM_COLUMNS`: ``in_w`` is a 1-D problem's length).

Unlike benchdnn (whose dilation is 0-based), ``d1`` means no dilation, as in ``torch.nn.ConvTranspose2d``.
dtype, bias and layout are not part of the shape; they are separate arguments and separate result columns.
Underscores between fields are allowed when parsing (``mb1_ic4ih8_oc4kh2sh2``), so benchdnn-style spacing
reads back.
"""

from __future__ import annotations

import re

import numpy as np

from testbed.problem import Problem

__all__ = ["format_descriptor", "parse_descriptor", "problem_columns", "PROBLEM_COLUMNS"]

#: The axis letters of each spatial rank (benchdnn's: a 1-D problem has only a width).
_AXIS_LETTERS = {1: "w", 2: "hw", 3: "dhw"}
#: (field prefix, Problem attribute, default when every axis is omitted), in printing order.
_SPATIAL = (
    ("i", "in_size", None),
    ("k", "kernel_size", None),
    ("s", "stride", 1),
    ("p", "padding", 0),
    ("op", "output_padding", 0),
    ("d", "dilation", 1),
)
_FIELDS = ("g", "mb", "ic", "oc", *(prefix + axis for prefix, _, _ in _SPATIAL for axis in "dhw"))
# Longest names first so that "oph" is not read as "o" + "ph".
_TOKEN = re.compile(r"_*(" + "|".join(sorted(_FIELDS, key=len, reverse=True)) + r")(\d+)_*")


def format_descriptor(problem: Problem) -> str:
    """The descriptor string of ``problem``'s shape (see the module docstring for the fields)."""
    parts = [] if problem.groups == 1 else [f"g{problem.groups}"]
    parts.append(f"mb{problem.batch}ic{problem.in_channels}")
    letters = _AXIS_LETTERS[problem.rank]
    for prefix, attr, default in _SPATIAL:
        if attr == "kernel_size":
            parts.append(f"oc{problem.out_channels}")
        values = getattr(problem, attr)
        if all(value == default for value in values):
            continue
        previous = None
        for letter, value in zip(letters, values):
            if value != previous:
                parts.append(f"{prefix}{letter}{value}")
            previous = value
    return "".join(parts)


def _rank_letters(values: dict) -> str:
    """The axis letters of the rank a descriptor's fields name: 3-D with a depth field, else 2-D with a height
    field, else 1-D with a width field, else 2-D (every rank has a width and a depth implies a height, so no
    field can name an axis its rank lacks)."""
    named = {name[-1] for name in values if name not in ("g", "mb", "ic", "oc")}
    return next((_AXIS_LETTERS[rank] for rank, axis in ((3, "d"), (2, "h"), (1, "w")) if axis in named), "hw")


def parse_descriptor(text: str, dtype=np.float32, has_bias: bool = False) -> Problem:
    """The :class:`Problem` a descriptor names, in ``dtype`` and with or without bias.

    Raises ValueError naming the descriptor when it is malformed (unknown or repeated field, missing ``ic``,
    ``oc``, or the first axis's input and kernel size: ``ih`` and ``kh`` in 2-D, ``id``/``kd`` in 3-D,
    ``iw``/``kw`` in 1-D; stray characters) or describes an invalid problem.
    """
    if not isinstance(text, str):
        raise TypeError(f"descriptor must be a str, got {type(text).__name__} {text!r}")
    values: dict[str, int] = {}
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() != position:
            break
        name, number = match.group(1), int(match.group(2))
        if name in values:
            raise ValueError(f"malformed descriptor {text!r}: field {name!r} appears twice")
        values[name] = number
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(
            f"malformed descriptor {text!r}: cannot read a field at {text[position:]!r}; expected "
            f"fields <name><int> with names {', '.join(_FIELDS)} (e.g. 'mb1ic1024ih28oc512kh2sh2')"
        )
    letters = _rank_letters(values)
    missing = [name for name in ("ic", f"i{letters[0]}", "oc", f"k{letters[0]}") if name not in values]
    if missing:
        raise ValueError(f"malformed descriptor {text!r}: missing required field(s) {', '.join(missing)}")
    kwargs = {}
    for prefix, attr, default in _SPATIAL:
        axis_values = [values.get(prefix + letters[0], default)]
        for letter in letters[1:]:
            axis_values.append(values.get(prefix + letter, axis_values[-1]))
        kwargs[attr] = tuple(axis_values)
    try:
        return Problem(
            batch=values.get("mb", 1),
            in_channels=values["ic"],
            out_channels=values["oc"],
            groups=values.get("g", 1),
            dtype=dtype,
            has_bias=has_bias,
            rank=len(letters),
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"descriptor {text!r} does not name a valid problem: {exc}") from exc


#: The per-axis parameters of :func:`problem_columns`: (column prefix, Problem attribute).
_AXIS_COLUMNS = (
    ("in", "in_size"),
    ("out", "out_size"),
    ("kernel", "kernel_size"),
    ("stride", "stride"),
    ("padding", "padding"),
    ("output_padding", "output_padding"),
    ("dilation", "dilation"),
)

#: The per-parameter result columns of :func:`problem_columns`, in order: the rank and layout, then one column
#: per parameter and spatial axis (``_d``, ``_h``, ``_w``; empty for the axes a problem of lower rank lacks, a
#: 1-D problem's one axis being its width, as in the descriptor).
PROBLEM_COLUMNS = (
    "rank",
    "layout",
    "batch",
    "in_channels",
    "out_channels",
    *(f"{prefix}_{axis}" for prefix, _ in _AXIS_COLUMNS for axis in "dhw"),
    "groups",
    "has_bias",
)


def problem_columns(problem: Problem) -> dict:
    """Every parameter of ``problem`` as its own scalar column (for tidy result tables); None for the spatial
    axes its rank lacks."""
    row = {
        "rank": problem.rank,
        "layout": problem.layout,
        "batch": problem.batch,
        "in_channels": problem.in_channels,
        "out_channels": problem.out_channels,
    }
    letters = _AXIS_LETTERS[problem.rank]
    for prefix, attr in _AXIS_COLUMNS:
        by_axis = dict(zip(letters, getattr(problem, attr)))
        row.update({f"{prefix}_{axis}": by_axis.get(axis) for axis in "dhw"})
    row["groups"] = problem.groups
    row["has_bias"] = problem.has_bias
    return row
