"""testbed: interchangeable implementations of the transposed convolution (ConvTranspose1d/2d/3d).

One function with PyTorch's exact semantics, computed by a chosen backend:

>>> import numpy as np
>>> import testbed
>>> testbed.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), stride=2, backend="naive").shape
(1, 1, 4, 4)

Functions
---------
conv_transpose2d  -- the transposed convolution (``torch.nn.functional.conv_transpose2d``)
conv_transpose1d, conv_transpose3d -- the same over one / three spatial axes
conv_transpose_backward -- its gradients (input, weight, bias), after ATen's ``convolution_backward``
output_shape      -- its output shape, without computing it
use_backend       -- a context manager selecting the backend of a block of calls
resolve_backend   -- the backend a call would run (``auto``'s choice included)
set_planner, get_planner -- how ``auto`` decides: class rules (``estimate``) or timing (``measure``)
tune, explain     -- measure the backends for a call now / say which backend ``auto`` runs and why
export_wisdom, import_wisdom, forget_wisdom -- the stored measurements (FFTW's wisdom)
list_backends, available_backends, backend_status, get_backend, register -- the backend registry
clear_workspace, workspace_bytes -- the scratch buffers backends keep between calls

Classes
-------
Problem                   -- a validated configuration: shapes, parameters, dtype
Backend                   -- one implementation, as registered
Gradients                 -- conv_transpose_backward's (grad_input, grad_weight, grad_bias)
UnsupportedConfiguration  -- a backend cannot compute a valid configuration (a ValueError)
BackendUnavailable        -- a backend cannot run on this machine (a RuntimeError)
TuneError                 -- tune could not measure any candidate (a RuntimeError naming each and why)
"""

from . import registry
from ._version import __version__ as __version__
from .api import conv_transpose1d, conv_transpose2d, conv_transpose3d, resolve_backend, use_backend
from .backward import Gradients, conv_transpose_backward
from .planner import TuneError, explain, get_planner, set_planner, tune
from .problem import Problem, UnsupportedConfiguration, output_shape
from .registry import (
    Backend,
    BackendUnavailable,
    available_backends,
    backend_status,
    get_backend,
    list_backends,
    register,
)
from .wisdom import export_wisdom, forget_wisdom, import_wisdom
from .workspace import clear_workspace, workspace_bytes


def _register_builtin_backends() -> None:
    from . import backends  # noqa: F401  (importing the package registers every backend module)


registry._load_builtin_backends = _register_builtin_backends

__all__ = [
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_backward",
    "Gradients",
    "output_shape",
    "use_backend",
    "resolve_backend",
    "Problem",
    "UnsupportedConfiguration",
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "backend_status",
    "get_backend",
    "list_backends",
    "register",
    "set_planner",
    "get_planner",
    "tune",
    "TuneError",
    "explain",
    "export_wisdom",
    "import_wisdom",
    "forget_wisdom",
    "clear_workspace",
    "workspace_bytes",
]
