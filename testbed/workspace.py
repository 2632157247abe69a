"""Scratch buffers kept across calls, so that a repeated call allocates (and page-faults) only its result.

A large temporary allocated on every call costs more than its arithmetic here: glibc serves blocks above its
mmap threshold (128 KiB at start, at most 32 MiB) with fresh pages, and every page is faulted in and zeroed on
first touch, on every call. Backends therefore take their temporaries from :func:`scratch`, which keeps them:

* **per thread**: each Python thread has its own buffers, so concurrent calls never share one (and no lock is
  held while a kernel runs);
* **bounded**: a thread keeps at most :data:`WORKSPACE_CACHE_BYTES` (default 256 MiB, or the environment
  variable ``TESTBED_WORKSPACE_BYTES``); a request beyond what fits is served by a fresh array that is not kept;
* **reused by name**: a buffer is grown when a call needs more, never shrunk; the arrays handed out are views
  of it (64-byte aligned), valid until the same thread asks for that name again;
* **released** by :func:`clear_workspace` (every thread's buffers; one still in use by a running call is freed
  when that call returns) and when a thread ends.

:func:`workspace_bytes` says how much is held. Results are not kept (the caller owns them), but a large one is
placed where transparent huge pages can back all of it (:func:`empty_result`).
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

from ._environ import env_int

__all__ = ["WORKSPACE_CACHE_BYTES", "clear_workspace", "empty_result", "scratch", "workspace_bytes"]

_ALIGN = 64
#: :func:`empty_result` aligns results of at least :data:`_HUGE_FROM` bytes to this (an x86-64 huge page).
_HUGE_PAGE = 2 * 2**20
_HUGE_FROM = 4 * 2**20


def _cap_from_environment() -> int:
    """``TESTBED_WORKSPACE_BYTES`` (bytes, >= 0), else 256 MiB; a malformed value warns once
    (:mod:`testbed._environ`)."""
    return env_int("TESTBED_WORKSPACE_BYTES", 256 * 2**20, minimum=0)


#: Bytes of scratch buffers one thread keeps between calls (``TESTBED_WORKSPACE_BYTES``; 0 keeps none).
WORKSPACE_CACHE_BYTES = _cap_from_environment()


class _Pool:
    """One thread's buffers: name → raw uint8 array, and name → the last view handed out of it (with its shape and
    dtype), which the same request gets again without building a view (a few µs of every call)."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}
        self.views: dict[str, tuple] = {}

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers.values())


_local = threading.local()
_pools: weakref.WeakSet = weakref.WeakSet()  # every live thread's pool (a pool goes when its thread ends)
_pools_lock = threading.Lock()


def _pool() -> _Pool:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = _Pool()
        with _pools_lock:
            _pools.add(pool)
    return pool


def _view(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    start = (-raw.ctypes.data) % _ALIGN
    count = math.prod(shape)
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


def empty_result(shape, dtype) -> np.ndarray:
    """A new uninitialised C-contiguous array for a call's result, owned by the caller like ``np.empty``'s; from
    4 MiB up it starts on a 2 MiB boundary.

    NumPy asks the kernel for transparent huge pages for blocks of 4 MiB and more (``madvise``), but a block
    gets them only for the 2 MiB-aligned regions wholly inside it; the rest is faulted in 4 KiB pages, one fault
    each, on first touch. Where a block lands is the allocator's choice, so the same call faulted 407 times on
    one run and 918 on another. Aligned, the result is all huge pages (when the kernel has them to give): for a
    39 MB result (unet4's) allocated and filled, 20 faults and 4.8-6.1 ms against 407-918 and 6.2-8.1 ms (one
    thread, medians of 20). The block is at most 2 MiB larger; its untouched ends cost address space only."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _HUGE_FROM:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(nbytes + _HUGE_PAGE, dtype=np.uint8)
    start = (-raw.ctypes.data) % _HUGE_PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def scratch(name: str, shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` from this thread's buffer ``name``.

    The buffer is kept for the next call (see the module docstring); the array is only valid until this thread
    requests ``name`` again. Names are ``"<backend>.<purpose>"``.
    """
    pool = _pool()
    last = pool.views.get(name)
    if last is not None and last[0] == shape and last[1] == dtype:
        return last[2]
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    needed = math.prod(shape) * dtype.itemsize + _ALIGN
    raw = pool.buffers.get(name)
    if raw is None or raw.nbytes < needed:
        held = pool.nbytes - (0 if raw is None else raw.nbytes)
        if held + needed > WORKSPACE_CACHE_BYTES:
            return np.empty(shape, dtype=dtype)  # over the cap: a temporary, not kept
        pool.buffers.pop(name, None)  # free the old one before the new one is allocated
        pool.views.pop(name, None)
        raw = pool.buffers[name] = np.empty(needed, dtype=np.uint8)
    view = _view(raw, shape, dtype)
    pool.views[name] = (shape, dtype, view)
    return view


def clear_workspace() -> None:
    """Release the scratch buffers every thread keeps between calls.

    Backends keep their temporaries (blocks of a GEMM, a repacked weight) across calls so that a repeated call
    allocates nothing but its result (see :mod:`testbed.workspace`); this frees them, e.g. after a large
    problem. Buffers in use by a call running in another thread are freed when that call returns. The next
    call allocates them again.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> y = testbed.conv_transpose2d(np.ones((1, 8, 4, 4), np.float32), np.ones((8, 4, 2, 2), np.float32),
    ...                              stride=2, backend="numba_cpu")
    >>> testbed.clear_workspace()
    >>> testbed.workspace_bytes()
    0
    """
    with _pools_lock:
        pools = list(_pools)
    for pool in pools:
        pool.buffers, pool.views = {}, {}


def workspace_bytes() -> int:
    """Bytes of scratch buffers held by all threads now."""
    with _pools_lock:
        pools = list(_pools)
    return sum(pool.nbytes for pool in pools)
