"""pytest set-up shared by the test suite and the doctests (``make doctest``: testbed/'s docstrings and README.md).

Doctests print NumPy arrays; their expected output is written for NumPy's default print options, which every
doctest gets here (restored afterwards), whatever an earlier test or a user's start-up file set.
"""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _default_print_options(doctest_namespace):
    with np.printoptions(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False, nanstr="nan",
                         infstr="inf", sign="-", floatmode="maxprec", legacy=False):
        yield
