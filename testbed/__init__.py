"""testbed: interchangeable implementations of the 2-D transposed convolution (ConvTranspose2d)."""

from .api import conv_transpose2d
from .planner import explain, get_planner, set_planner, tune
from .problem import Problem, UnsupportedConfiguration, output_shape
from .registry import (Backend, BackendUnavailable, available_backends, backend_status, get_backend,
                       list_backends, register)
from .wisdom import export_wisdom, forget_wisdom, import_wisdom

__all__ = ["conv_transpose2d", "output_shape", "Problem", "UnsupportedConfiguration", "Backend",
           "BackendUnavailable", "available_backends", "backend_status", "get_backend", "list_backends",
           "register", "set_planner", "get_planner", "tune", "explain", "export_wisdom", "import_wisdom",
           "forget_wisdom"]
__version__ = "0.1.0"
