"""Importing this package registers every backend; each module is one algorithm and registers itself.

Order matters only for listing; ``auto`` comes last because it dispatches to the others.
"""

import importlib

_MODULES = ["naive", "col2im", "fft", "kron", "polyphase", "torch_backend", "numba_cpu", "numba_cuda", "auto"]

for _name in _MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # a backend module not written yet must not break the others
        if exc.name != f"{__name__}.{_name}":
            raise
