"""The backend registry: one small table of interchangeable implementations (after scipy.fft's backends).

A backend module builds a :class:`Backend` and calls :func:`register`; nothing else in the project names it.
Backends know nothing of each other; only ``auto`` (the dispatcher) looks others up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .problem import LAYOUTS, LAYOUTS_BY_RANK, RANKS, SUPPORTED_DTYPES, Problem

__all__ = [
    "DIRECTIONS",
    "Backend",
    "BackendUnavailable",
    "register",
    "get_backend",
    "list_backends",
    "available_backends",
    "backend_status",
]


class BackendUnavailable(RuntimeError):
    """A registered backend cannot run on this machine.

    Raised by :func:`conv_transpose2d` and :func:`resolve_backend` when the chosen backend's probe fails: torch
    not installed, no CUDA GPU, a broken driver. The message says why and, where it can, how to fix it.

    See Also
    --------
    backend_status : the same reason for every backend, without raising.

    Examples
    --------
    >>> import testbed
    >>> issubclass(testbed.BackendUnavailable, RuntimeError)
    True
    """


#: The directions of a transposed convolution a backend may compute (oneDNN's ``FWD``, ``BWD_D``, ``BWD_W``): the
#: forward ``y = conv_transpose(x, W)``, the data gradient ``dL/dx`` and the weight gradient ``dL/dW``.
DIRECTIONS = ("forward", "backward_data", "backward_weight")


def _always_available() -> tuple[bool, str]:
    return True, "available"


@dataclass(frozen=True)
class Backend:
    """One implementation of ``conv_transpose2d``, as held by the registry.

    Parameters
    ----------
    name : str
        The registry key, the value of ``conv_transpose2d(..., backend=name)``.
    description : str
        One line: the algorithm.
    run : callable
        ``run(x, weight, bias, problem) -> y``. Receives the batched input ``(N, C_in, H, W)``, the weight and
        the bias (or None) already validated, in ``problem.dtype``, and returns the ``problem.output_shape``
        result. Must not modify its arguments. Host backends get C-contiguous NumPy arrays; ``device="cuda"``
        backends also accept CUDA device arrays and then return one.
    groups, dilation : bool, default True
        Whether ``groups > 1`` and ``dilation > 1`` are supported.
    dtypes : tuple of numpy.dtype, default (float32, float64)
        The dtypes it computes in.
    device : {"cpu", "cuda", "any"}, default "cpu"
        Where it runs; ``"any"`` for a dispatcher that follows the arrays.
    deterministic : bool, default True
        Whether repeated calls give bitwise-identical results.
    check : callable, optional
        ``check(problem) -> str | None``: further limits, the reason a valid problem is unsupported, or None.
    probe : callable, optional
        ``probe() -> (usable, why)``: whether it can run on this machine and, if not, why. Always usable by
        default.
    writes_out : bool, default False
        Whether ``run`` also takes ``out=`` (a C-contiguous, writable array of ``problem.output_shape`` and dtype,
        overlapping no argument), writes the result there and returns it; :meth:`compute` copies into ``out``
        for the other backends.
    layouts : tuple of str, default ("NCHW",)
        The layouts (:data:`~testbed.problem.LAYOUTS`) ``run`` computes natively: it receives input and ``out``
        and returns its result in ``problem.layout``. :meth:`compute` converts the others (see there). The 2-D
        names stand for channels first / channels last at every rank (``"NHWC"`` covers ``"NLC"`` and
        ``"NDHWC"``).
    ranks : tuple of int, default (2,)
        The spatial ranks it computes (:data:`~testbed.problem.RANKS`: 1, 2, 3); ``run`` receives arrays with
        ``problem.rank`` spatial axes.
    choose : callable, optional
        Only for a dispatcher: ``choose(problem, on_device) -> Backend``, the backend that computes
        ``problem`` (``on_device``: the arrays are CUDA device arrays); ``choose(problem, on_device, direction)``
        for the backward directions a dispatcher declares. See :meth:`resolve`.
    describe : callable, optional
        ``describe(problem) -> str``: how it would compute ``problem`` (the algorithm it picks, the instruction
        set its kernels were built for), for :func:`testbed.explain`.
    backward_data : callable, optional
        ``backward_data(grad_output, weight, problem) -> grad_input``: the gradient with respect to the input
        (a strided convolution of ``grad_output``), of ``problem.input_shape``. Receives the batched C-contiguous
        ``grad_output`` of ``problem.output_shape`` in a native layout (:meth:`native_layout`; converted by
        :func:`testbed.conv_transpose_backward` like the forward's input) and the weight, in ``problem.dtype``,
        ``problem.batch >= 1``; must not modify them. None: the backend does not compute this direction.
    backward_weight : callable, optional
        ``backward_weight(grad_output, x, problem) -> grad_weight``: the gradient with respect to the weight (a
        correlation of the input with ``grad_output``, reduced over the batch and every pixel), of
        ``problem.weight_shape``; arrays as for ``backward_data``. None: not computed.

    See Also
    --------
    register : add a backend to the registry.
    get_backend : a registered backend by name.

    Notes
    -----
    A backend module builds one ``Backend`` and calls :func:`register`; tests, experiments and benchmarks
    iterate the registry, so a new backend needs no edits elsewhere. Arguments are validated once, by
    :class:`Problem`, before ``run`` is called; ``run`` never re-checks them.

    Examples
    --------
    >>> import testbed
    >>> kron = testbed.get_backend("kron")
    >>> kron.device, kron.groups
    ('cpu', True)
    >>> problem = testbed.Problem(batch=1, in_channels=4, in_size=(8, 8), out_channels=2, kernel_size=3,
    ...                           stride=2)
    >>> kron.supports(problem), kron.unsupported_reason(problem)
    (False, 'needs stride == kernel size and dilation 1, got stride (2, 2), ...')
    >>> testbed.get_backend("naive").supports(problem)
    True
    """

    name: str
    description: str
    run: Callable[..., Any]
    groups: bool = True  # groups > 1 supported
    dilation: bool = True  # dilation > 1 supported
    dtypes: tuple[np.dtype, ...] = SUPPORTED_DTYPES
    device: str = "cpu"  # "cpu", "cuda", or "any" (the dispatcher)
    deterministic: bool = True  # bitwise-repeatable results
    check: Callable[[Problem], str | None] | None = None  # extra limits: a reason, or None if supported
    probe: Callable[[], tuple[bool, str]] = _always_available  # (usable here?, why / how)
    choose: Callable[..., Backend] | None = None  # a dispatcher's choice (problem, on_device[, direction])
    writes_out: bool = False  # run(..., out=...) computes in place
    layouts: tuple[str, ...] = ("NCHW",)  # the input/output layouts run computes natively
    describe: Callable[[Problem], str] | None = None  # how it would compute a problem (for explain)
    ranks: tuple[int, ...] = (2,)  # the spatial ranks run computes
    backward_data: Callable[..., Any] | None = None  # (grad_output, weight, problem) -> grad_input
    backward_weight: Callable[..., Any] | None = None  # (grad_output, x, problem) -> grad_weight

    @property
    def directions(self) -> tuple[str, ...]:
        """The directions (:data:`DIRECTIONS`) it computes: ``"forward"`` always, the backward ones it declares."""
        declared = {"backward_data": self.backward_data, "backward_weight": self.backward_weight}
        return ("forward", *(name for name, function in declared.items() if function is not None))

    def unsupported_reason(self, problem: Problem, direction: str = "forward") -> str | None:
        """Why this backend cannot compute ``problem`` (a valid configuration) in ``direction``
        (:data:`DIRECTIONS`), or None if it can. ValueError for a direction that is not one of them."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if direction not in self.directions:
            return f"the {direction} direction is not implemented (it computes {', '.join(self.directions)})"
        if problem.rank not in self.ranks:
            return (
                f"{problem.rank}-D transposed convolution not supported (layout {problem.layout}); it computes "
                f"spatial rank {' and '.join(str(r) for r in self.ranks)}"
            )
        if problem.dtype not in self.dtypes:
            return f"dtype {problem.dtype} not in {[str(d) for d in self.dtypes]}"
        if problem.groups > 1 and not self.groups:
            return f"groups={problem.groups} not supported"
        if set(problem.dilation) != {1} and not self.dilation:
            return f"dilation={problem.dilation} not supported"
        return self.check(problem) if self.check else None

    def compute(self, x: Any, weight: Any, bias: Any, problem: Problem, out: Any = None) -> Any:
        """``run``, with the result written into ``out`` when given (validated by ``conv_transpose2d``): in
        place if the backend ``writes_out`` and ``out`` is C-contiguous, else computed and copied in.

        A layout the backend does not compute natively (not in :attr:`layouts`) is converted to its first
        native one: host arrays are transposed (a copy of the input), computed, and the result transposed back
        into a C-contiguous array of ``problem.layout`` (or into ``out``); CUDA device arrays are handed over as
        strided views in the native layout (no copy), which backends that write ``out`` index through their
        strides."""
        if self.native_layout(problem) != problem.layout:
            return self._compute_converted(x, weight, bias, problem, out)
        if out is None:
            return self.run(x, weight, bias, problem)
        device_out = is_device_array(out)
        if self.writes_out and (device_out or (out.flags.c_contiguous and out.flags.aligned)):
            return self.run(x, weight, bias, problem, out=out)
        result = self.run(x, weight, bias, problem)
        if device_out:
            from numba import cuda

            (out if hasattr(out, "copy_to_device") else cuda.as_cuda_array(out)).copy_to_device(result)
        else:
            np.copyto(out, result)
        return out

    def native_layout(self, problem: Problem) -> str:
        """The layout ``run`` computes ``problem`` in: ``problem.layout`` when declared in :attr:`layouts` (by
        its 2-D family name), else the first declared one, at the problem's rank."""
        first, last = LAYOUTS_BY_RANK[problem.rank]
        family = "NHWC" if problem.channels_last else "NCHW"
        if family in self.layouts:
            return problem.layout
        return last if self.layouts[0] == "NHWC" else first

    def _compute_converted(self, x: Any, weight: Any, bias: Any, problem: Problem, out: Any) -> Any:
        native = problem.with_(layout=self.native_layout(problem))
        if is_device_array(x):
            there = layout_axes(problem.layout, native.layout)
            if not self.writes_out:
                raise TypeError(
                    f"backend {self.name!r} cannot compute {problem.layout} device arrays: it does not "
                    f"write into out=, which the layout conversion on the device needs"
                )
            if out is None:
                from numba import cuda

                out = cuda.device_array(problem.output_shape, dtype=problem.dtype)
            self.run(permuted(x, there), weight, bias, native, out=permuted(out, there))
            return out
        return run_converted(self.compute, x, weight, bias, problem, native.layout, out)

    def supports(self, problem: Problem, direction: str = "forward") -> bool:
        """Whether this backend computes ``problem`` in ``direction`` (:meth:`unsupported_reason` is None)."""
        return self.unsupported_reason(problem, direction) is None

    def resolve(self, problem: Problem, on_device: bool = False, direction: str = "forward") -> Backend:
        """The backend that computes ``problem`` in ``direction``: this one, or for a dispatcher the one it
        chooses (a dispatcher's ``choose`` is asked ``choose(problem, on_device, direction)`` for the backward
        directions only, so a forward-only ``choose(problem, on_device)`` keeps working)."""
        if self.choose is None:
            return self
        return self.choose(problem, on_device) if direction == "forward" else self.choose(problem, on_device, direction)

    @property
    def available(self) -> bool:
        """Whether it can run on this machine (the CUDA simulator counts)."""
        return self.probe()[0]

    @property
    def status(self) -> str:
        """``"available"``, ``"simulator (...)"`` or the reason it is unavailable."""
        return self.probe()[1]

    @property
    def timing_kind(self) -> str | None:
        """ "cpu", "gpu", or None when timings would be meaningless (unavailable, or the CUDA simulator)."""
        ok, why = self.probe()
        if not ok or "simulator" in why:
            return None
        return "gpu" if self.device == "cuda" else "cpu"


def layout_axes(source: str, target: str) -> tuple[int, ...]:
    """The axis order that views an array in layout ``source`` as ``target`` (one rank): ``array.transpose(axes)``."""
    return tuple(source.index(axis) for axis in target)


def run_converted(
    run: Callable[..., Any],
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    problem: Problem,
    layout: str,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``run(x, weight, bias, problem)`` computed in another ``layout`` on host arrays: ``x`` transposed into it (a
    C-contiguous copy), the result transposed back into a C-contiguous array of ``problem.layout``, or into
    ``out``."""
    native = problem.with_(layout=layout)
    result = run(np.ascontiguousarray(x.transpose(layout_axes(problem.layout, layout))), weight, bias, native)
    back = result.transpose(layout_axes(layout, problem.layout))
    if out is None:
        return np.ascontiguousarray(back)
    np.copyto(out, back)
    return out


def permuted(array: Any, axes: tuple[int, ...]) -> Any:
    """A view of ``array`` with its axes in the order ``axes`` (no copy): NumPy, the CUDA simulator's and CUDA
    device arrays (through ``__cuda_array_interface__`` with permuted shape and strides)."""
    if isinstance(array, np.ndarray) or type(array).__module__.startswith("numba.cuda.simulator"):
        return array.transpose(axes)
    from numba import cuda

    face = dict(array.__cuda_array_interface__)
    shape = tuple(face["shape"])
    itemsize = np.dtype(face["typestr"]).itemsize
    strides = face.get("strides") or tuple(
        int(np.prod(shape[i + 1 :], dtype=np.int64)) * itemsize for i in range(len(shape))
    )
    face.update(shape=tuple(shape[a] for a in axes), strides=tuple(strides[a] for a in axes))
    return cuda.from_cuda_array_interface(face, owner=array)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry under ``backend.name``.

    Parameters
    ----------
    backend : Backend
        The implementation to register.

    Returns
    -------
    Backend
        ``backend`` itself, so a module can write ``BACKEND = register(Backend(...))``.

    Raises
    ------
    ValueError
        If a backend of that name is already registered.

    See Also
    --------
    Backend : what a backend declares.
    list_backends : every registered name.

    Notes
    -----
    The modules of :mod:`testbed.backends` register themselves when the package is imported. Names are unique:
    registering a second backend under a taken name is an error rather than a silent replacement.

    Examples
    --------
    >>> import testbed
    >>> testbed.register(testbed.get_backend("naive"))
    Traceback (most recent call last):
        ...
    ValueError: backend 'naive' is already registered
    """
    if backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is already registered")
    if not backend.layouts or not set(backend.layouts) <= set(LAYOUTS):
        raise ValueError(
            f"backend {backend.name!r}: layouts must be a non-empty tuple of {LAYOUTS}, got {backend.layouts!r}"
        )
    if not backend.ranks or not set(backend.ranks) <= set(RANKS):
        raise ValueError(f"backend {backend.name!r}: ranks must be a non-empty tuple of {RANKS}, got {backend.ranks!r}")
    _REGISTRY[backend.name] = backend
    return backend


#: Registers the built-in backends on the first lookup (importing :mod:`testbed.backends`, whose modules register
#: themselves). Set by the package ``testbed``, which sits above the registry and the backends alike, so that the
#: registry, which every backend imports, imports no backend (no cycle; lazily, so ``import testbed`` stays fast).
_load_builtin_backends: Callable[[], object] | None = None


def _loaded() -> dict[str, Backend]:
    if _load_builtin_backends is not None:
        _load_builtin_backends()
    return _REGISTRY


def get_backend(name: str | Backend) -> Backend:
    """The registered backend called ``name``.

    Parameters
    ----------
    name : str or Backend
        A name from :func:`list_backends`; a :class:`Backend` object is returned as it is.

    Returns
    -------
    Backend
        Its declaration: name, description, supported groups/dilation/dtypes, device, determinism, ``run``.

    Raises
    ------
    ValueError
        If no backend of that name is registered (the message lists the registered names).

    See Also
    --------
    list_backends, available_backends, backend_status
    resolve_backend : the backend a given call would run.

    Notes
    -----
    A registered backend may still be unavailable on this machine (see :attr:`Backend.available`);
    ``conv_transpose2d`` then raises :class:`BackendUnavailable`.

    Examples
    --------
    >>> import testbed
    >>> testbed.get_backend("col2im").description
    'GEMM into a column buffer ...'
    >>> testbed.get_backend("cudnn")
    Traceback (most recent call last):
        ...
    ValueError: backend must be one of [...], got 'cudnn'
    """
    registry = _loaded()
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"backend must be one of {sorted(registry)}, got {name!r}")
    return registry[name]


def list_backends() -> list[str]:
    """Every registered backend's name, usable here or not.

    Returns
    -------
    list of str
        In registration order; ``"auto"`` last.

    See Also
    --------
    available_backends : only those that can run here.
    backend_status : why the others cannot.

    Examples
    --------
    >>> import testbed
    >>> names = testbed.list_backends()
    >>> names[0], names[-1]
    ('naive', 'auto')
    """
    return list(_loaded())


def available_backends() -> list[str]:
    """The backends that can run on this machine.

    Returns
    -------
    list of str
        Registered names whose probe succeeds, in registration order. The CUDA backends count as available in
        numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where they compute correctly but slowly.

    See Also
    --------
    list_backends : all of them.
    backend_status : the reason for each.

    Examples
    --------
    The NumPy and Numba CPU backends need no optional dependency:

    >>> import testbed
    >>> {"naive", "col2im", "fft", "kron", "polyphase", "numba_cpu", "auto"} <= set(testbed.available_backends())
    True
    """
    return [name for name, b in _loaded().items() if b.available]


def backend_status() -> dict[str, str]:
    """For each registered backend, whether it can run here and, if not, why.

    Returns
    -------
    dict of str to str
        Name → ``"available"``, ``"available (…version or device…)"``, ``"simulator (…)"``, or the reason it is
        unavailable with how to fix it (e.g. the pip command for torch).

    See Also
    --------
    available_backends : the names that can run.

    Examples
    --------
    >>> import testbed
    >>> testbed.backend_status()["naive"]
    'available'
    """
    return {name: b.status for name, b in _loaded().items()}


def is_device_array(value: object) -> bool:
    """A CUDA device array: anything with ``__cuda_array_interface__``, or the CUDA simulator's stand-in."""
    if isinstance(value, np.ndarray):
        return False
    return hasattr(value, "__cuda_array_interface__") or type(value).__module__.startswith("numba.cuda.simulator")
