"""How the compiled backends share a process: Numba's on-disk cache, its threading layer, and ``fork()``.

**The Numba cache.** Kernels are compiled once and kept in Numba's on-disk cache (``cache=True``) when that
can be done safely:

* ``TESTBED_NUMBA_CACHE=0`` (or ``off``/``false``/``no``), read at import, turns the on-disk cache off: every
  process compiles in memory (a few seconds per kernel and dtype). Use it for shared or read-only installs.
* Where Numba finds no writable cache location (a read-only install, an unwritable ``HOME``, no
  ``NUMBA_CACHE_DIR``) the kernels compile in memory and one :class:`NumbaCacheWarning` says so; every backend
  keeps working (Numba itself would fail at import, taking the whole registry down).
* An entry that cannot be read (a zero-length or truncated index ``.nbi`` or data ``.nbc`` file, as after a
  power loss) is reported once with its path, recompiled and rewritten; a cache that cannot be written is
  reported once and skipped.

*Security.* Numba's cache files are Python pickles, and loading a kernel unpickles them: whoever can write
the cache folder can run code in every process that loads from it. testbed loads only files owned by the
current user (or root) and not writable by everyone, and ignores (with a warning) the others. Even so, never
point ``NUMBA_CACHE_DIR`` at a folder that other users can write; on shared machines give each user their own
(Numba's default is ``__pycache__`` beside the sources when writable, else ``~/.cache/numba``) or set
``TESTBED_NUMBA_CACHE=0``.

**Threads.** Numba's ``omp`` and ``tbb`` threading layers are thread-safe; its ``workqueue`` layer (the fallback
when neither OpenMP nor TBB is available, or ``NUMBA_THREADING_LAYER=workqueue``) is not: two parallel regions
at once abort the process. Under that layer testbed serialises its parallel kernels with one lock, so the
backends may be called from any number of threads whatever the layer.

**fork().** GNU OpenMP (Numba's ``omp`` layer on Linux, and PyTorch's CPU thread pool) cannot be used in a child
forked after the parent used it: Numba kills the child (SIGTERM), which leaves ``multiprocessing.Pool.map``
waiting forever, and PyTorch's parallel regions deadlock. In such a child testbed runs single-threaded twins
of its Numba kernels, and runs torch with one thread (as PyTorch's own DataLoader workers do), so a
fork-based pool works, each worker on one core. For multi-threaded workers use the ``spawn`` or
``forkserver`` start method (``multiprocessing.get_context("forkserver")``).
"""

from __future__ import annotations

import functools
import os
import stat
import sys
import threading
import types
import warnings

import numba
from numba import njit

from .._environ import env_flag

__all__ = ["CACHE_ENV", "NumbaCacheWarning", "cache_enabled", "can_cache", "parallel_kernel", "prepare_torch"]

#: The environment variable that turns the on-disk cache off ("0", "off", "false", "no").
CACHE_ENV = "TESTBED_NUMBA_CACHE"


class NumbaCacheWarning(RuntimeWarning):
    """The Numba on-disk cache could not be used as is; the kernels were compiled (again) instead."""


def cache_enabled() -> bool:
    """Whether kernels use the on-disk cache: ``TESTBED_NUMBA_CACHE`` unset, or "1"/"on"/"true"/"yes"; any other
    value than those or "0"/"off"/"false"/"no" warns once and reads as on (:mod:`testbed._environ`)."""
    return env_flag(CACHE_ENV, True)


_warned: set = set()


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, NumbaCacheWarning, stacklevel=3)


# ---- the cache ---------------------------------------------------------------------------------------------


def _guarded_cache_class():
    """Numba's FunctionCache with three changes: untrusted or unreadable entries are recompiled (and then
    rewritten), and a failed write is reported instead of failing the compilation."""
    from numba.core.caching import FunctionCache, IndexDataCacheFile

    def trusted(path) -> bool:
        try:
            info = os.stat(path)
        except OSError:
            return True  # missing: Numba treats it as an empty cache
        if info.st_uid not in (os.geteuid(), 0) or info.st_mode & stat.S_IWOTH:
            _warn_once(
                path,
                f"testbed: not loading the Numba cache file {path}: it is owned by uid "
                f"{info.st_uid} or writable by everyone, and cache files are unpickled (loading one "
                f"can run code); recompiling instead",
            )
            return False
        return True

    class GuardedCacheFile(IndexDataCacheFile):
        def _load_index(self):
            if not trusted(self._index_path):
                return {}
            try:
                return super()._load_index()
            except Exception as exc:  # truncated / zero-length / garbage: any unpickling error
                _warn_once(
                    self._index_path,
                    f"testbed: the Numba cache index {self._index_path} is unreadable "
                    f"({type(exc).__name__}: {exc}); recompiling and rewriting it",
                )
                return {}

        def _load_data(self, name):
            path = self._data_path(name)
            if not trusted(path):
                raise OSError(f"untrusted cache file {path}")  # load() treats it as a missing entry
            try:
                return super()._load_data(name)
            except OSError:
                raise
            except Exception as exc:
                _warn_once(
                    path,
                    f"testbed: the Numba cache entry {path} is unreadable ({type(exc).__name__}: "
                    f"{exc}); recompiling and rewriting it",
                )
                raise OSError(str(exc)) from exc

    class GuardedCache(FunctionCache):
        def __init__(self, py_func):
            super().__init__(py_func)
            self._cache_file.__class__ = GuardedCacheFile

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception as exc:  # an entry that unpickles but does not rebuild
                _warn_once(
                    ("rebuild", self._name),
                    f"testbed: the Numba cache entry for {self._name} in "
                    f"{self._cache_path} could not be loaded ({type(exc).__name__}: "
                    f"{exc}); recompiling",
                )
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except OSError as exc:
                _warn_once(
                    ("save", self._cache_path),
                    f"testbed: could not write the Numba cache in "
                    f"{self._cache_path} ({exc}); the kernels will be compiled "
                    f"again in the next process",
                )

    return GuardedCache


def can_cache(func) -> bool:
    """Whether ``func``'s kernels should use the on-disk cache: it is switched on and Numba finds a writable
    location for it (else one warning, and the kernels compile in memory)."""
    if not cache_enabled():
        return False
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(func)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        _warn_once(
            "no-locator",
            f"testbed: Numba has no writable cache location ({exc}); compiling the kernels "
            f"in memory in each process. Set NUMBA_CACHE_DIR to a folder only you can write, "
            f"or {CACHE_ENV}=0 to silence this.",
        )
        return False
    return True


def _compile(func, parallel: bool, fastmath=False):
    """``njit(parallel=parallel, fastmath=fastmath)(func)`` with the guarded on-disk cache where it can be used."""
    dispatcher = njit(parallel=parallel, fastmath=fastmath)(func)
    if can_cache(func):
        dispatcher._cache = _guarded_cache_class()(func)  # what ``cache=True`` (enable_caching) does
    return dispatcher


def _twin(func, suffix: str):
    """A copy of ``func`` under another name, so its cache entries are kept apart from ``func``'s (Numba keys
    cache files by qualified name and line, not by compilation flags)."""
    twin = types.FunctionType(
        func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__, func.__closure__
    )
    twin.__qualname__ = func.__qualname__ + suffix
    twin.__module__ = func.__module__
    return twin


# ---- threads and fork ----------------------------------------------------------------------------------------

_LAYER_LOCK = threading.Lock()
_inherited_omp_pool = False  # this process was forked after GNU OpenMP threads were started (by Numba)
_torch_before_fork = False  # this process was forked with torch imported (its OpenMP pool may be started)
_torch_single_threaded = False


def _threading_layer():
    """The threading layer Numba launched in this process (or its parent), or None before the first launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _after_fork_in_child() -> None:
    global _inherited_omp_pool, _torch_before_fork, _torch_single_threaded
    _inherited_omp_pool = _inherited_omp_pool or (_threading_layer() == "omp" and _gnu_openmp())
    _torch_before_fork = _torch_before_fork or "torch" in sys.modules
    _torch_single_threaded = False


def _gnu_openmp() -> bool:
    try:
        from numba.np.ufunc import omppool  # type: ignore[attr-defined]

        return omppool.openmp_vendor == "GNU"
    except Exception:
        return True  # unknown vendor: assume the unsafe one


os.register_at_fork(after_in_child=_after_fork_in_child)


_launched_layer = None  # the threading layer, once Numba has launched one (it never changes after)


def _layer_needs_lock() -> bool:
    # Before the first launch the layer is unknown (the launch picks it, perhaps workqueue): lock then too.
    global _launched_layer
    if _launched_layer is None:
        _launched_layer = _threading_layer()
    return _launched_layer in (None, "workqueue")


class ParallelKernel:
    """A Numba ``parallel=True`` kernel that may be called from threads and from forked children.

    ``kernel(*args)`` runs the parallel compilation, under a lock when the threading layer is not thread-safe;
    in a child forked after GNU OpenMP was started it runs the single-threaded twin (``kernel.serial``), compiled
    on first use with the same ``fastmath`` flags. ``kernel.parallel`` is the Numba dispatcher itself.
    """

    def __init__(self, func, fastmath=False):
        functools.update_wrapper(self, func)
        self.py_func = func
        self.fastmath = fastmath
        self.parallel = _compile(func, parallel=True, fastmath=fastmath)
        self._serial = None

    @property
    def serial(self):
        if self._serial is None:
            self._serial = _compile(_twin(self.py_func, "_serial"), parallel=False, fastmath=self.fastmath)
        return self._serial

    def __call__(self, *args):
        if _inherited_omp_pool:
            return self.serial(*args)
        if _layer_needs_lock():
            with _LAYER_LOCK:
                return self.parallel(*args)
        return self.parallel(*args)


def parallel_kernel(func=None, *, fastmath=False):
    """Decorator for the backends' Numba kernels: ``njit(parallel=True, cache=...)`` made thread- and fork-safe
    (see the module docstring). The kernel body uses ``prange``; its serial twin runs it as ``range``.
    ``@parallel_kernel(fastmath={"contract"})`` passes Numba's ``fastmath`` flags to both compilations (only
    flags that keep IEEE semantics belong here: ``contract`` fuses ``a·b + c`` into one FMA)."""
    if func is None:
        return functools.partial(ParallelKernel, fastmath=fastmath)
    return ParallelKernel(func, fastmath=fastmath)


def serial_kernel(func):
    """Decorator for a single-threaded Numba kernel: ``njit`` with the guarded on-disk cache, as the twins of
    :func:`parallel_kernel` (no parallel region, so nothing to make fork- or thread-safe)."""
    return _compile(func, parallel=False)


def prepare_torch(torch) -> None:
    """Call before torch computes: in a child forked with torch imported, run torch on one thread, since its
    OpenMP pool may have been started by the parent and would deadlock here."""
    global _torch_single_threaded
    if _torch_before_fork and not _torch_single_threaded:
        torch.set_num_threads(1)
        _torch_single_threaded = True
