"""Case descriptors in the spirit of oneDNN benchdnn (``tests/benchdnn/doc/driver_conv.md``).

A descriptor is one string naming every shape parameter of a :class:`~testbed.problem.Problem`, e.g.
``mb1ic1024ih28oc512kh2sh2`` (the first U-Net up-convolution). Fields, in printing order:

=====  ==============================================  =================================
field  meaning                                         omitted when
=====  ==============================================  =================================
g      groups                                          1
mb     batch                                           never (parsing defaults it to 1)
ic     input channels                                  never
ih/iw  input height / width                            iw == ih
oc     output channels                                 never
kh/kw  kernel height / width                           kw == kh
sh/sw  stride                                          sh == sw == 1 (sw: sw == sh)
ph/pw  padding                                         ph == pw == 0 (pw: pw == ph)
oph/w  output padding                                  oph == opw == 0 (opw: opw == oph)
dh/dw  dilation, **PyTorch convention: 1 = none**      dh == dw == 1 (dw: dw == dh)
=====  ==============================================  =================================

Unlike benchdnn (whose dilation is 0-based), ``d1`` means no dilation, as in ``torch.nn.ConvTranspose2d``.
dtype and bias are not part of the shape; they are separate arguments and separate result columns.
Underscores between fields are allowed when parsing (``mb1_ic4ih8_oc4kh2sh2``), so benchdnn-style spacing
reads back.
"""

from __future__ import annotations

import re

import numpy as np

from testbed.problem import Problem

__all__ = ["format_descriptor", "parse_descriptor", "problem_columns", "PROBLEM_COLUMNS"]

#: (h field, w field, Problem attribute, default) for the paired fields, in printing order.
_PAIRS = (
    ("ih", "iw", "in_size", None),
    ("kh", "kw", "kernel_size", None),
    ("sh", "sw", "stride", 1),
    ("ph", "pw", "padding", 0),
    ("oph", "opw", "output_padding", 0),
    ("dh", "dw", "dilation", 1),
)
_FIELDS = ("g", "mb", "ic", "ih", "iw", "oc", "kh", "kw", "sh", "sw", "ph", "pw", "oph", "opw", "dh", "dw")
_REQUIRED = ("ic", "ih", "oc", "kh")
# Longest names first so that "oph" is not read as "o" + "ph".
_TOKEN = re.compile(r"_*(" + "|".join(sorted(_FIELDS, key=len, reverse=True)) + r")(\d+)_*")


def format_descriptor(problem: Problem) -> str:
    """The descriptor string of ``problem``'s shape (see the module docstring for the fields)."""
    parts = [] if problem.groups == 1 else [f"g{problem.groups}"]
    parts.append(f"mb{problem.batch}ic{problem.in_channels}")
    for h_name, w_name, attr, default in _PAIRS:
        if attr == "kernel_size":
            parts.append(f"oc{problem.out_channels}")
        h, w = getattr(problem, attr)
        if not (h == default and w == h):
            parts.append(f"{h_name}{h}")
        if w != h:
            parts.append(f"{w_name}{w}")
    return "".join(parts)


def parse_descriptor(text: str, dtype=np.float32, has_bias: bool = False) -> Problem:
    """The :class:`Problem` a descriptor names, in ``dtype`` and with or without bias.

    Raises ValueError naming the descriptor when it is malformed (unknown or repeated field, missing ``ic``,
    ``ih``, ``oc`` or ``kh``, stray characters) or describes an invalid problem.
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
    missing = [name for name in _REQUIRED if name not in values]
    if missing:
        raise ValueError(f"malformed descriptor {text!r}: missing required field(s) {', '.join(missing)}")
    kwargs = {}
    for h_name, w_name, attr, default in _PAIRS:
        h = values.get(h_name, default)
        kwargs[attr] = (h, values.get(w_name, h))
    try:
        return Problem(
            batch=values.get("mb", 1),
            in_channels=values["ic"],
            out_channels=values["oc"],
            groups=values.get("g", 1),
            dtype=dtype,
            has_bias=has_bias,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"descriptor {text!r} does not name a valid problem: {exc}") from exc


#: The per-parameter result columns of :func:`problem_columns`, in order.
PROBLEM_COLUMNS = (
    "batch",
    "in_channels",
    "in_h",
    "in_w",
    "out_channels",
    "out_h",
    "out_w",
    "kernel_h",
    "kernel_w",
    "stride_h",
    "stride_w",
    "padding_h",
    "padding_w",
    "output_padding_h",
    "output_padding_w",
    "dilation_h",
    "dilation_w",
    "groups",
    "has_bias",
)


def problem_columns(problem: Problem) -> dict:
    """Every parameter of ``problem`` as its own scalar column (for tidy result tables)."""
    row = {"batch": problem.batch, "in_channels": problem.in_channels}
    row["in_h"], row["in_w"] = problem.in_size
    row["out_channels"] = problem.out_channels
    row["out_h"], row["out_w"] = problem.out_size
    for attr in ("kernel", "stride", "padding", "output_padding", "dilation"):
        row[f"{attr}_h"], row[f"{attr}_w"] = getattr(problem, "kernel_size" if attr == "kernel" else attr)
    row["groups"] = problem.groups
    row["has_bias"] = problem.has_bias
    return row
