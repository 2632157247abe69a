"""What several ``numba_cpu`` paths share."""

import numpy as np

__all__ = ["bias_or_zeros"]


def bias_or_zeros(bias, problem):
    """``bias``, or zeros of the output channels' count and the problem's dtype."""
    return np.zeros(problem.out_channels, dtype=problem.dtype) if bias is None else bias
