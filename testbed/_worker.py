"""Worker processes that run only testbed's code: one fresh interpreter per job, never the caller's script.

multiprocessing's ``spawn`` and ``forkserver`` start methods import the parent's ``__main__`` in every child: a
research script without an ``if __name__ == "__main__":`` guard then runs its whole body again in each timing
worker (and a nested ``tune`` there fails), and a notebook's or ``python -c``'s main module cannot be imported at
all. (pyperf re-executes the calling script on purpose; that is the behaviour avoided here.) Instead a worker is

    ``<sys.executable> <the parent's interpreter flags> -c "<import testbed._worker; main()>" <root> <in fd> <out fd>``

started with :class:`subprocess.Popen`: the parent's environment and working directory, standard input from
``/dev/null`` (a script read from standard input is never consumed by a worker), standard output and error
shared with the parent. Over a pipe it receives one pickled request — the parent's ``sys.path`` and
``(fn, args)``, ``fn`` pickled by its qualified name — imports what unpickling needs (testbed, the module of
``fn``), runs ``fn(*args)`` and sends back the pickled return value or a :class:`~testbed.timing.WorkerError`
carrying the exception's text. Nothing from a main *script* can be sent (the parent refuses, with a
:class:`TypeError` that says so, before a process is started); a main module run with ``python -m`` is sent by
its importable name, which the worker imports without running its ``__main__`` block.

The parent holds the request pipe open while the job runs; a worker whose parent dies (SIGKILL, a crash) sees
the pipe close and exits at once, and :func:`run` kills and reaps its worker on every way out (a timeout,
``KeyboardInterrupt``, any exception): no worker outlives the call that started it.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import types
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["MainModuleError", "run"]

#: The directory holding the ``testbed`` package this process imported: put first on the worker's path, so that
#: the worker imports the same testbed whatever its working directory.
_ROOT = str(Path(__file__).resolve().parents[1])
_BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from testbed._worker import main; main()"
#: Exit status of a worker whose parent went away (EX_SOFTWARE, never the status of a signal).
_ORPHANED = 70


class MainModuleError(TypeError):
    """A function or class sent to a worker is defined in the script being run (``__main__``): a worker never
    re-runs that script, so it cannot import it."""


def _from_module(module: str, qualname: str) -> Any:
    """``module``'s attribute ``qualname`` (dotted), the module imported by name: how a worker finds a function
    of a main module that was run with ``python -m``."""
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _main_module_name(obj: Any, qualname: str) -> str | None:
    """The importable name of the main module when it was run with ``python -m package.module`` (its
    ``__spec__``) and ``obj`` is that module's own ``qualname``, else None: a script file, ``python -c``,
    standard input or a notebook has no such name."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if not name or name == "__main__" or "<locals>" in qualname:
        return None
    found: Any = main
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return name if found is obj else None


class _Pickler(pickle.Pickler):
    """A pickler that sends the main module's functions and classes by their importable name when the main
    module was run with ``python -m`` (the worker imports that module, whose ``if __name__ == "__main__":``
    block then does not run), and otherwise refuses them with a clear error (the worker would fail to unpickle
    them with an ``AttributeError`` about ``__main__``)."""

    def reducer_override(self, obj):
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            name = getattr(obj, "__qualname__", repr(obj))
            module = _main_module_name(obj, name)
            if module is not None:
                return _from_module, (module, name)
            raise MainModuleError(
                f"{name} is defined in the script being run (__main__); testbed's worker processes never run "
                f"that script again, so they cannot import it: define {name} in an importable module"
            )
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _interpreter_flags() -> list[str]:
    """The parent's ``-X``/``-W``/``-O``/... options, as ``multiprocessing``'s spawn passes them."""
    try:
        return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]
    except Exception:  # a private helper: an interpreter without it starts its workers without the flags
        return []


def describe_exit(code: int | None) -> str:
    """``killed by SIGKILL`` for a process ended by a signal, else ``exit status N``."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit status {code}"


def _send(connection: Connection, request: bytes) -> None:
    try:
        connection.send_bytes(request)
    except OSError:  # the worker died before reading it: reported as its death
        pass


#: The longest single wait for a worker's answer: a signal (Ctrl-C) taken by another thread of this process does not
#: interrupt the main thread's wait, whose handler runs only when the wait returns, so waits are sliced this short.
_WAIT_SLICE_S = 0.25


def _wait_readable(connection: Connection, timeout_s: float | None) -> bool:
    """``connection.poll(timeout_s)`` in slices of :data:`_WAIT_SLICE_S`, so that a Ctrl-C is honoured within a
    slice whichever thread the signal was delivered to."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = _WAIT_SLICE_S if deadline is None else min(_WAIT_SLICE_S, deadline - time.monotonic())
        if connection.poll(max(0.0, left)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def run(fn, args: tuple, timeout_s: float | None, error: type[Exception]) -> Any:
    """``fn(*args)`` in a fresh worker process: its return value, or ``error`` (an exception class taking one
    message) raised when the worker raises, dies or runs past ``timeout_s`` (it is killed then).
    :class:`MainModuleError` (a TypeError) when ``fn`` or an argument comes from ``__main__``."""
    # two layers: the worker sets its path before it unpickles the call (which imports fn's module)
    request = pickle.dumps((list(sys.path), _dumps((fn, tuple(args)))), protocol=pickle.HIGHEST_PROTOCOL)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    process = None
    try:
        process = subprocess.Popen(
            [sys.executable, *_interpreter_flags(), "-c", _BOOTSTRAP, _ROOT, str(to_child_r), str(from_child_w)],
            stdin=subprocess.DEVNULL,
            pass_fds=(to_child_r, from_child_w),
            close_fds=True,
        )
    finally:
        os.close(to_child_r)
        os.close(from_child_w)
        if process is None:
            os.close(to_child_w)
            os.close(from_child_r)
    to_child = Connection(to_child_w, readable=False)
    from_child = Connection(from_child_r, writable=False)
    payload = None
    answered = False
    # sent from a thread: a request larger than the pipe's buffer waits for the worker to read it, and a worker
    # that hangs before reading must still meet the timeout
    sender = threading.Thread(target=_send, args=(to_child, request), daemon=True, name="testbed-worker-request")
    sender.start()
    try:
        if not _wait_readable(from_child, timeout_s):
            raise error(f"worker process timed out after {timeout_s:g} s and was killed")
        try:
            payload = from_child.recv_bytes()
        except (EOFError, OSError):
            pass
        answered = True
    finally:
        if not answered:  # timed out, or interrupted (Ctrl-C): the job is abandoned
            process.kill()
        sender.join()  # done: the worker read the request, or died (a broken pipe)
        to_child.close()  # a worker still running sees its parent go and exits
        from_child.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except BaseException:  # a second Ctrl-C while waiting: still leave no worker behind
            process.kill()
            process.wait()
            raise
    if payload is None:
        raise error(f"worker process died without a result ({describe_exit(process.returncode)})")
    kind, value = pickle.loads(payload)
    if kind == "error":
        raise error(value)
    return value


# ---- the worker's side -------------------------------------------------------------------------------------------


def _exit_when_orphaned(connection: Connection) -> None:
    """Block until the parent closes the request pipe (it has the result, or it died), then end the process
    at once if it is still running: a worker never outlives its parent's interest in it."""
    try:
        connection.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(_ORPHANED)


def main() -> None:
    """The worker: one request in, one result out (see the module docstring)."""
    requests = Connection(int(sys.argv[2]), writable=False)
    results = Connection(int(sys.argv[3]), readable=False)
    try:
        raw = requests.recv_bytes()
    except (EOFError, OSError):
        os._exit(_ORPHANED)
    threading.Thread(target=_exit_when_orphaned, args=(requests,), daemon=True, name="testbed-orphan-watch").start()
    try:
        path, call = pickle.loads(raw)
        sys.path[:] = path
        fn, args = pickle.loads(call)
        reply: tuple[str, Any] = ("ok", fn(*args))
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        payload = pickle.dumps(("error", f"{type(exc).__name__} in the worker: {exc}"))
    for stream in (sys.stdout, sys.stderr):  # before the parent has the result and closes the pipe (which
        try:  # ends this process at once): what the job printed is kept
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    results.send_bytes(payload)
    results.close()


if __name__ == "__main__":
    main()
