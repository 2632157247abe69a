"""BLAS matrix products for Numba kernels, with leading dimensions, and the BLAS thread count around them.

:func:`gemm` is callable from ``@njit`` code: ``gemm(a, b, c, trans_a, trans_b)`` computes the row-major
``c = op(a) @ op(b)`` (``op`` transposes when its flag is True) in one BLAS ``?gemm`` call, for 2-D float32 or
float64 arrays whose last axis is unit-stride and whose rows may be anywhere: a block of a larger matrix is
passed by its pointer and leading dimension, never copied. (``np.dot`` in Numba accepts only contiguous
operands and copies the others.) It calls the BLAS Numba itself uses, SciPy's (``scipy.linalg.cython_blas``,
through Numba's ``numba_xxgemm`` helper), so kernels using it stay cacheable.

:func:`single_threaded_blas` is for kernels whose threads each call :func:`gemm` on their own block: a
multithreaded OpenBLAS entered from two threads at once fights over its own thread pool (measured here: 9×
slower than the same blocks with a one-thread BLAS). Within the ``with`` block every BLAS library of the
process (threadpoolctl's ``user_api="blas"``) runs on one thread; the previous counts are restored when the
last thread using it leaves (it is reference counted, so overlapping calls from several Python threads keep
the limit until all are done). While it is in force, BLAS calls made by *other* Python threads of the
process also run on one thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
from numba import types
from numba.extending import overload
from numba.np.linalg import ensure_blas

__all__ = ["INT32_MAX", "gemm", "single_threaded_blas"]

#: SciPy's BLAS takes 32-bit sizes and leading dimensions (LP64): larger operands must not reach it.
INT32_MAX = 2**31 - 1

ensure_blas()  # imports scipy.linalg.cython_blas, where numba_xxgemm finds ?gemm


def _xxgemm(dtype):
    pointer = types.CPointer(dtype)
    # fmt: off
    signature = types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,  # kind, trans, m n k
                           pointer, pointer, types.intp, pointer, types.intp,                     # alpha a lda b ldb
                           pointer, pointer, types.intp)                                          # beta, c, ldc
    # fmt: on
    return types.ExternalFunction("numba_xxgemm", signature)


_XXGEMM = {types.float32: (_xxgemm(types.float32), ord("s")), types.float64: (_xxgemm(types.float64), ord("d"))}


def gemm(a, b, c, trans_a, trans_b):
    """``c[...] = op(a) @ op(b)`` (row-major, one BLAS call); callable from Numba kernels only."""
    raise NotImplementedError("gemm is called from Numba-compiled code")


@overload(gemm)
def _gemm_impl(a, b, c, trans_a, trans_b):
    if not all(isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == c.dtype for arr in (a, b, c)):
        return None
    if c.dtype not in _XXGEMM:
        return None
    xxgemm, kind = _XXGEMM[c.dtype]
    transpose, keep = ord("t"), ord("n")

    def impl(a, b, c, trans_a, trans_b):
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        one = np.ones(1, c.dtype)
        zero = np.zeros(1, c.dtype)
        # BLAS is column-major: the row-major c = op(a) op(b) is the column-major cᵀ = op(b)ᵀ op(a)ᵀ, and a
        # row-major matrix with row stride ld is the column-major transpose with leading dimension ld.
        status = xxgemm(
            kind,
            transpose if trans_b else keep,
            transpose if trans_a else keep,
            n,
            m,
            k,
            one.ctypes,
            b.ctypes,
            b.strides[0] // b.itemsize,
            a.ctypes,
            a.strides[0] // a.itemsize,
            zero.ctypes,
            c.ctypes,
            c.strides[0] // c.itemsize,
        )
        if status != 0:
            raise RuntimeError("BLAS ?gemm failed")

    return impl


# ---- the BLAS thread count ---------------------------------------------------------------------------------

_LOCK = threading.Lock()
_users = 0
_restore = None
_controller = None


def _blas_libraries():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # after ensure_blas(): SciPy's BLAS is loaded by now
    return _controller.select(user_api="blas")


def _release_openblas_control() -> None:
    """Let whichever thread comes next set OpenBLAS's thread count. threadpoolctl (3.5+) lets only one Python
    thread, the first to set it, change a pthreads OpenBLAS's count (the others are silently ignored) until
    that thread clears it, which only ``with threadpool_limits()`` does; so after the main thread had limited
    once, a call from any other thread ran its BLAS on every core (128→128 k3 @64² through ``fft``: 0.7 s in
    a second thread against 0.1 s in the main one). Called under :data:`_LOCK`, around our own limit."""
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Every BLAS library of the process on one thread inside the block (see the module docstring)."""
    global _users, _restore
    with _LOCK:
        if _users == 0:
            libraries = _blas_libraries()
            if any(lib.num_threads != 1 for lib in libraries.lib_controllers):
                _release_openblas_control()
                _restore = libraries.limit(limits=1)
        _users += 1
    try:
        yield
    finally:
        with _LOCK:
            _users -= 1
            if _users == 0 and _restore is not None:
                _release_openblas_control()  # the last to leave may not be the thread that limited
                _restore.restore_original_limits()
                _release_openblas_control()
                _restore = None
