"""Wisdom: the backend decisions of :func:`testbed.tune` and the ``measure`` planner, kept on disk (after FFTW).

A decision is stored per **problem signature** (dtype, layout (which names the rank), N, C_in, C_out, the input
size, kernel, stride, padding, output_padding, dilation, groups, bias, device: :func:`signature`) under a **machine
fingerprint** (CPU model, instruction-set row, core count, the CPUs this process may use, thread settings, the
allocator and BLAS environment, the versions of Python, testbed, numpy, scipy, numba and torch, and a hash of the
backends' source:
:func:`machine_fingerprint`).
Only the entries of this machine's fingerprint are ever applied; a file may hold several machines' wisdom.

The file is JSON, in ``platformdirs.user_cache_dir("testbed")/wisdom.json`` or the file named by the
environment variable ``TESTBED_WISDOM`` (``off`` keeps wisdom in memory only, for this process)::

    {"format": "testbed-wisdom", "version": 1,
     "machines": {"<key>": {"fingerprint": {...},
                            "entries": {"<signature>": {"backend": "numba_cpu", "median_s": {...}, ...}}}}}

Writes take an exclusive ``fcntl`` lock on ``<file>.lock``, re-read the file, merge (the newer entry of a
signature wins) and replace the file atomically (a temporary sibling, fsync, ``os.replace``): two processes
tuning at once lose nothing, and a reader sees the old file or the new one, never half of one. A file that is
not valid wisdom (corrupted, truncated, another program's) gives one :class:`WisdomWarning` and is ignored;
the next write moves it aside to ``<file>.corrupt-<UTC time>-<pid>`` (a name no earlier backup has: nothing is
ever overwritten) and starts afresh. A file written by a newer testbed (a higher format ``version``) is never
written, moved or replaced: its entries are read where their layout is this version's, this process keeps its
own decisions in memory, and one :class:`WisdomWarning` names the version. A write that fails (read-only cache
directory) warns once and keeps the decision in memory for the rest of the process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import files, machine
from .problem import Problem

__all__ = [
    "WisdomWarning",
    "WISDOM_ENV",
    "wisdom_path",
    "signature",
    "machine_fingerprint",
    "machine_key",
    "lookup",
    "record",
    "export_wisdom",
    "import_wisdom",
    "forget_wisdom",
    "load_entries",
]

WISDOM_ENV = "TESTBED_WISDOM"
FORMAT = "testbed-wisdom"
VERSION = 1
#: Values of ``TESTBED_WISDOM`` that disable the file (decisions then live in memory, for this process only).
DISABLED = ("off", "none", "0")
#: Environment variables that change which backend is fastest: thread counts, OpenBLAS's forced kernels
#: (``OPENBLAS_CORETYPE``), and the allocator (glibc's mmap threshold moves times 6x).
FINGERPRINT_ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)
FINGERPRINT_ENVIRONMENT_PREFIXES = ("MALLOC_",)
#: The libraries whose versions are part of the fingerprint (besides Python and the testbed).
FINGERPRINT_LIBRARIES = ("numpy", "scipy", "numba", "torch")
#: How often (seconds) a process checks whether the wisdom file changed under it.
RECHECK_S = 1.0


class WisdomWarning(UserWarning):
    """The wisdom file could not be read or written; it is ignored (reads) or kept in memory (writes)."""


# ---- where ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _path_for(value: str) -> Path | None:
    """The wisdom file a value of ``TESTBED_WISDOM`` names (cached: looked up on every ``auto`` call)."""
    value = value.strip()
    if value.lower() in DISABLED:
        return None
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("testbed", appauthor=False)) / "wisdom.json"


def wisdom_path() -> Path | None:
    """The wisdom file in use: ``$TESTBED_WISDOM``, else ``wisdom.json`` in the user cache directory;
    None when ``TESTBED_WISDOM`` is ``off``.

    Examples
    --------
    >>> import os, testbed.wisdom
    >>> os.environ["TESTBED_WISDOM"] = "/tmp/my-wisdom.json"
    >>> str(testbed.wisdom.wisdom_path())
    '/tmp/my-wisdom.json'
    >>> del os.environ["TESTBED_WISDOM"]
    """
    return _path_for(os.environ.get(WISDOM_ENV, ""))


# ---- what ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def signature(problem: Problem, device: str = "cpu", direction: str = "forward") -> str:
    """The key of ``problem`` in the wisdom file: every field that can change which backend is fastest.

    Parameters
    ----------
    problem : Problem
        The validated configuration (unbatched calls are batch 1).
    device : str, default "cpu"
        ``"cpu"`` for host arrays, ``"cuda:<GPU name>"`` for CUDA device arrays.
    direction : {"forward", "backward_data", "backward_weight"}, default "forward"
        The direction computed (:data:`testbed.registry.DIRECTIONS`); appended for the backward ones, so the
        forward's signatures (and wisdom files written before directions existed) are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from testbed import Problem
    >>> from testbed.wisdom import signature
    >>> signature(Problem(batch=1, in_channels=128, in_size=196, out_channels=64, kernel_size=2, stride=2,
    ...                   dtype=np.float32))
    'float32 NCHW N1 Cin128 Cout64 H196 W196 k2x2 s2x2 p0x0 op0x0 d1x1 g1 nobias cpu'
    >>> signature(Problem(batch=1, in_channels=8, in_size=(100,), out_channels=4, kernel_size=16, stride=8),
    ...           direction="backward_weight")
    'float64 NCL N1 Cin8 Cout4 L100 k16 s8 p0 op0 d1 g1 nobias cpu backward_weight'
    """
    per_axis = " ".join(
        f"{name}{'x'.join(map(str, values))}"
        for name, values in (
            ("k", problem.kernel_size),
            ("s", problem.stride),
            ("p", problem.padding),
            ("op", problem.output_padding),
            ("d", problem.dilation),
        )
    )
    # the layout names the rank ("NCL", "NCHW", "NCDHW"), so signatures of different ranks never collide
    sizes = " ".join(f"{axis.upper()}{n}" for axis, n in zip(problem.axes, problem.in_size))
    return (
        f"{problem.dtype} {problem.layout} N{problem.batch} Cin{problem.in_channels} "
        f"Cout{problem.out_channels} {sizes} "
        f"{per_axis} g{problem.groups} {'bias' if problem.has_bias else 'nobias'} {device}"
        f"{'' if direction == 'forward' else ' ' + direction}"
    )


def _backends_source_hash() -> str:
    """sha256 of the backend implementations' source (not the dispatcher's): wisdom measured on other kernels
    is not applied."""
    digest = hashlib.sha256()
    root = Path(__file__).parent / "backends"
    for path in sorted(root.rglob("*.py")):  # every file of a backend package too
        name = path.relative_to(root).as_posix()
        if name in ("__init__.py", "auto.py"):
            continue
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def machine_fingerprint() -> dict[str, Any]:
    """What makes a measured decision valid on this machine (computed once per process, from
    :mod:`testbed.machine`).

    CPU model and architecture, the instruction-set row the kernels use (``TESTBED_ISA`` caps it), core count,
    the CPUs this process may run on, the thread settings numba starts with (``numba.config.NUMBA_NUM_THREADS``)
    and the environment that sets the other libraries' thread counts, kernels and allocator
    (:data:`FINGERPRINT_ENVIRONMENT`), the versions of Python, testbed, numpy, scipy, numba and torch (read from
    the installed metadata: torch is not imported), and a hash of the backends' source. Thread counts changed at
    run time (``torch.set_num_threads``) are not seen.

    Examples
    --------
    >>> from testbed.wisdom import machine_fingerprint
    >>> sorted(machine_fingerprint())  # doctest: +NORMALIZE_WHITESPACE
    ['cpu_affinity', 'cpu_count', 'cpu_model', 'environment', 'isa', 'machine', 'numba_threads', 'testbed_source',
     'versions']
    """
    cpu = machine.cpu()
    return {
        "cpu_model": cpu["model"],
        "machine": cpu["architecture"],
        "isa": cpu["isa"],
        "cpu_count": cpu["count"],
        "cpu_affinity": cpu["affinity"],
        "numba_threads": machine.threads()["numba_threads_at_start"],
        "environment": machine.environment(FINGERPRINT_ENVIRONMENT, FINGERPRINT_ENVIRONMENT_PREFIXES),
        "versions": machine.library_versions(FINGERPRINT_LIBRARIES),
        "testbed_source": _backends_source_hash(),
    }


_KEY_CACHE: list = [None, ""]  # [the fingerprint object last hashed, its key]


def machine_key(fingerprint: Mapping[str, Any] | None = None) -> str:
    """A short hash of a fingerprint (default: this machine's), the key of its section in the file."""
    if fingerprint is None:
        fingerprint = machine_fingerprint()
        if _KEY_CACHE[0] is fingerprint:  # the cached fingerprint: hashed once per process
            return _KEY_CACHE[1]
        _KEY_CACHE[:] = [fingerprint, machine_key(fingerprint)]
        return _KEY_CACHE[1]
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the file ----------------------------------------------------------------------------------------------------


def _empty() -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "machines": {}}


class NewerWisdomError(ValueError):
    """The wisdom file was written by a newer testbed (a higher format ``version``): it is read where its
    layout allows, never written, moved or replaced."""

    def __init__(self, version: int, readable: dict[str, Any] | None):
        super().__init__(
            f"written by a newer testbed (wisdom format version {version}; this testbed writes version {VERSION})"
        )
        self.version, self.readable = version, readable


def _validated(data: Any) -> dict[str, Any]:
    """``data`` if it is wisdom of this format (entries without a backend name dropped), else ValueError;
    :class:`NewerWisdomError` for a newer format version (with what of it reads as this version, if any)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f'not a testbed wisdom file (no "format": {FORMAT!r})')
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        try:
            readable: dict[str, Any] | None = _validated({**data, "version": VERSION})
        except ValueError:
            readable = None
        raise NewerWisdomError(version, readable)
    if version != VERSION:
        raise ValueError(f"wisdom format version {version!r}, this testbed reads version {VERSION}")
    machines = data.get("machines")
    if not isinstance(machines, dict):
        raise ValueError('"machines" must be an object')
    clean = _empty()
    for key, section in machines.items():
        if not isinstance(section, dict) or not isinstance(section.get("entries"), dict):
            raise ValueError(f'machine {key!r} has no "entries" object')
        entries = {
            sig: entry
            for sig, entry in section["entries"].items()
            if isinstance(entry, dict) and isinstance(entry.get("backend"), str)
        }
        clean["machines"][key] = {"fingerprint": section.get("fingerprint"), "entries": entries}
    return clean


def _parse(path: Path) -> dict[str, Any]:
    """The wisdom in ``path`` (empty if the file does not exist); ValueError if it is not wisdom."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _empty()
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    return _validated(data)


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    """Add ``other``'s entries to ``into``; of two entries for one signature the newer (``time``) wins."""
    for key, section in other["machines"].items():
        target = into["machines"].setdefault(key, {"fingerprint": section.get("fingerprint"), "entries": {}})
        for sig, entry in section["entries"].items():
            old = target["entries"].get(sig)
            if old is None or str(entry.get("time", "")) >= str(old.get("time", "")):
                target["entries"][sig] = entry


def _atomic_write(path: Path, data: Mapping[str, Any]) -> None:
    """The wisdom as JSON, written atomically (:func:`testbed.files.atomic_write_bytes`); creates the cache
    folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The wisdom file's lock between processes (:func:`testbed.files.locked`); creates the cache folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.locked(path):
        yield


def _newer_message(path: Path, exc: NewerWisdomError) -> str:
    return (
        f"the wisdom file {path} was {exc}: it is left untouched; "
        + ("its entries are read" if exc.readable is not None else "its entries cannot be read")
        + ", and this process keeps its own decisions in memory"
    )


def _move_aside(path: Path) -> Path:
    """Rename an unreadable wisdom file to ``<file>.corrupt-<UTC time>-<pid>`` (a further ``-N`` if taken),
    never replacing an earlier backup: the new name is linked first, which fails where it exists."""
    stem = f"{path.name}.corrupt-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S.%fZ}-{os.getpid()}"
    for attempt in range(1000):
        aside = path.with_name(stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            os.link(path, aside)
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network file systems): rename
            if aside.exists():
                continue
            os.rename(path, aside)
            return aside
        path.unlink()
        return aside
    raise FileExistsError(f"no free name to move {path} aside (tried {stem} and 999 more)")


class _Store:
    """The process's view of the wisdom file, merged with the decisions whose write failed (``memory``).

    A lookup runs on every ``auto`` call, so the view is kept and the file's ``stat`` checked at most every
    :data:`RECHECK_S` seconds: it is parsed again only when it changed. This process's own writes are seen at
    once; another process's within that delay.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.view: dict[Path | None, tuple[float, tuple | None, dict[str, Any]]] = {}
        self.memory: dict[Path | None, dict[str, Any]] = {}
        self.warned: set = set()

    def warn_once(self, key, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(message, WisdomWarning, stacklevel=4)

    def forget(self, path: Path | None) -> None:
        self.view.pop(path, None)

    def read(self, path: Path | None) -> dict[str, Any]:
        """The wisdom in use (treat as read-only); a bad file is warned about once and read as empty."""
        now = time.monotonic()
        seen = self.view.get(path)
        if seen is not None and now - seen[0] < RECHECK_S:
            return seen[2]
        state = None
        if path is not None:
            try:
                stat = path.stat()
                state = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            except OSError:
                pass
        if seen is not None and seen[1] == state:
            self.view[path] = (now, state, seen[2])
            return seen[2]
        data = _empty()
        if path is not None and state is not None:
            try:
                data = _parse(path)
            except NewerWisdomError as exc:
                data = exc.readable or _empty()
                self.warn_once(("newer", path, exc.version), _newer_message(path, exc))
            except (ValueError, OSError) as exc:
                self.warn_once((path, state), f"ignoring the wisdom file {path}: {exc}")
        if self.memory.get(path):
            _merge(data, self.memory[path])
        self.view[path] = (now, state, data)
        return data

    def write(self, path: Path | None, update: Mapping[str, Any]) -> None:
        """Merge ``update`` into the file under the lock; on failure keep it in memory and warn once."""
        if path is not None:
            try:
                with _locked(path):
                    try:
                        current = _parse(path)
                    except NewerWisdomError as exc:  # never written by this testbed: kept in memory
                        self.warn_once(("newer", path, exc.version), _newer_message(path, exc))
                        current = None
                    except ValueError as exc:
                        aside = _move_aside(path)
                        warnings.warn(
                            f"the wisdom file {path} was not valid wisdom ({exc}); moved aside to "
                            f"{aside}, starting a new one",
                            WisdomWarning,
                            stacklevel=4,
                        )
                        current = _empty()
                    if current is not None:
                        _merge(current, update)
                        _atomic_write(path, current)
                if current is not None:
                    self.forget(path)
                    return
            except OSError as exc:
                self.warn_once(
                    ("write", path),
                    f"cannot write the wisdom file {path} ({exc}); keeping decisions in memory for this process",
                )
        _merge(self.memory.setdefault(path, _empty()), update)
        self.forget(path)


_STORE = _Store()


def _section(data: Mapping[str, Any]) -> dict[str, Any]:
    return data["machines"].get(machine_key(), {}).get("entries", {})


def lookup(problem: Problem, device: str = "cpu", direction: str = "forward") -> dict[str, Any] | None:
    """This machine's wisdom entry for ``problem`` on ``device`` in ``direction`` (see :func:`signature`), or None.

    An entry is a dict with at least ``backend``; those written by :func:`testbed.tune` also hold ``median_s``
    (every timed candidate's median), ``isolation``, ``source`` and ``time``.
    """
    with _STORE.lock:
        return _section(_STORE.read(wisdom_path())).get(signature(problem, device, direction))


def record(problem: Problem, device: str, entry: Mapping[str, Any], direction: str = "forward") -> dict[str, Any]:
    """Store ``entry`` (must name a ``backend``) as this machine's decision for ``problem`` on ``device`` in
    ``direction``; the entry as stored (with its ``time`` and ``signature``)."""
    if not isinstance(entry.get("backend"), str):
        raise ValueError(f"a wisdom entry needs a backend name, got {entry.get('backend')!r}")
    stored = {**entry, "signature": signature(problem, device, direction), "time": _now()}
    update = _empty()
    update["machines"][machine_key()] = {"fingerprint": machine_fingerprint(), "entries": {stored["signature"]: stored}}
    with _STORE.lock:
        _STORE.write(wisdom_path(), update)
    return stored


def load_entries(path: str | os.PathLike | None = None, *, this_machine: bool = True) -> dict[str, dict]:
    """The entries of a wisdom file (default: the one in use), by signature: this machine's only, or with
    ``this_machine=False`` every machine's, keyed ``"<machine key>/<signature>"``."""
    if path is None:
        with _STORE.lock:
            data = _STORE.read(wisdom_path())
    else:
        data = _parse(Path(path))
    if this_machine:
        return dict(_section(data))
    return {
        f"{key}/{sig}": entry for key, section in data["machines"].items() for sig, entry in section["entries"].items()
    }


# ---- the public verbs ------------------------------------------------------------------------------------------


def export_wisdom(path: str | os.PathLike) -> int:
    """Write all wisdom in use (every machine's) to ``path``, atomically; the number of entries written.

    Parameters
    ----------
    path : str or path-like
        The file to write (replaced if it exists).

    Returns
    -------
    int
        How many entries (all machines) the file holds.

    See Also
    --------
    import_wisdom : merge such a file into the wisdom in use.
    forget_wisdom : drop all wisdom.

    Examples
    --------
    >>> import os, tempfile, testbed
    >>> folder = tempfile.mkdtemp()
    >>> os.environ["TESTBED_WISDOM"] = os.path.join(folder, "wisdom.json")
    >>> testbed.export_wisdom(os.path.join(folder, "exported.json"))      # nothing tuned yet
    0
    >>> del os.environ["TESTBED_WISDOM"]
    """
    with _STORE.lock:
        data = _STORE.read(wisdom_path())
    _atomic_write(Path(path), data)
    return sum(len(section["entries"]) for section in data["machines"].values())


def import_wisdom(path: str | os.PathLike) -> int:
    """Merge the wisdom file ``path`` into the wisdom in use; the number of entries that apply here.

    Entries of other machine fingerprints are kept (a shared file serves several machines) but never applied
    on this one. For a signature present in both, the newer decision wins.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`export_wisdom` (or a wisdom file itself).

    Returns
    -------
    int
        How many of the imported entries belong to this machine's fingerprint.

    Raises
    ------
    ValueError
        If ``path`` is not a wisdom file (the message says why); nothing is imported then.
    FileNotFoundError
        If ``path`` does not exist.

    Examples
    --------
    >>> import json, os, tempfile, testbed
    >>> folder = tempfile.mkdtemp()
    >>> os.environ["TESTBED_WISDOM"] = os.path.join(folder, "wisdom.json")
    >>> path = os.path.join(folder, "other.json")
    >>> with open(path, "w") as handle:
    ...     json.dump({"format": "testbed-wisdom", "version": 1, "machines": {}}, handle)
    >>> testbed.import_wisdom(path)
    0
    >>> del os.environ["TESTBED_WISDOM"]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"import_wisdom: no such file {path}")
    try:
        data = _parse(path)
    except ValueError as exc:
        raise ValueError(f"import_wisdom: {path} is not a testbed wisdom file: {exc}") from None
    with _STORE.lock:
        _STORE.write(wisdom_path(), data)
    return len(_section(data))


def forget_wisdom() -> None:
    """Drop all wisdom: the wisdom file in use is deleted (under its lock) and this process's memory cleared.

    ``auto`` then follows its class rules again (or, in the ``measure`` planner mode, measures anew).

    Examples
    --------
    >>> import os, tempfile, testbed
    >>> os.environ["TESTBED_WISDOM"] = os.path.join(tempfile.mkdtemp(), "wisdom.json")
    >>> testbed.forget_wisdom()
    >>> testbed.wisdom.load_entries()
    {}
    >>> del os.environ["TESTBED_WISDOM"]
    """
    path = wisdom_path()
    with _STORE.lock:
        if path is not None:
            with _locked(path):
                path.unlink(missing_ok=True)
        _STORE.memory.pop(path, None)
        _STORE.forget(path)
