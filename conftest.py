"""pytest set-up shared by the test suite and the doctests (``make doctest``: testbed/'s docstrings and README.md).

The environment: no wisdom file and the default planner, whatever the developer's shell says.

Doctests print NumPy arrays; their expected output is written for NumPy's default print options, which every
doctest gets here (restored afterwards), whatever an earlier test or a user's start-up file set.
"""

import os

import numpy as np
import pytest

# A developer's own wisdom file and planner choice must not steer the tests (auto's rule-based choices are what
# the tests and doctests expect); tests of wisdom name their own files. Set before testbed is imported.
os.environ["TESTBED_WISDOM"] = "off"
os.environ.pop("TESTBED_PLANNER", None)


@pytest.fixture(autouse=True)
def _default_print_options(doctest_namespace):
    with np.printoptions(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False, nanstr="nan",
                         infstr="inf", sign="-", floatmode="maxprec", legacy=False):
        yield
