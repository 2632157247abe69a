"""testbed: interchangeable implementations of the 2-D transposed convolution (ConvTranspose2d)."""

from .api import conv_transpose2d
from .problem import Problem, UnsupportedConfiguration, output_shape
from .registry import (Backend, BackendUnavailable, available_backends, backend_status, get_backend,
                       list_backends, register)

__all__ = ["conv_transpose2d", "output_shape", "Problem", "UnsupportedConfiguration", "Backend",
           "BackendUnavailable", "available_backends", "backend_status", "get_backend", "list_backends",
           "register"]
__version__ = "0.1.0"
