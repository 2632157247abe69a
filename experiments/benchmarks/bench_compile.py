"""First-call cost of the Numba CPU backend: cold compilation, and loading from numba's on-disk cache.

Every other benchmark warms up in setup, so compilation never reaches their timings; this one tracks it on
purpose. Each measurement runs in a fresh interpreter whose ``NUMBA_CACHE_DIR`` is a new temporary folder
(``cold``: nothing cached) or one that a previous interpreter filled (``cached``: what ``cache=True`` buys a
user's second session). The child imports numpy, scipy, numba and testbed first (identical for every
backend); the tracked value is the time to load the backends (``get_backend``, where eagerly compiled kernels
would compile) plus, for each of a few configurations of the spatial rank (``rank``: 1, 2, 3; see
:data:`COMPILE_CASES`), the first call minus the second call.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import testbed
from testbed.problem import Problem

from .common import CASES


def _tiny(rank: int, **fields) -> Problem:
    return Problem(batch=1, dtype=np.dtype(np.float32), rank=rank, **fields)


#: Per spatial rank, configurations that differ in kind (stride == kernel; tiny channel counts with an overlapping
#: stride and output padding; a general stride-1 layer), so a backend with one kernel per kind of configuration
#: compiles each of them: the 2-D ones are named cases, the 1-D and 3-D ones the same kinds along 1 and 3 axes.
COMPILE_CASES = {
    1: {
        "k2s2_1d": _tiny(1, in_channels=4, in_size=16, out_channels=4, kernel_size=2, stride=2),
        "k3s2p1op1_1d": _tiny(
            1, in_channels=3, in_size=7, out_channels=5, kernel_size=3, stride=2, padding=1, output_padding=1
        ),
        "k3s1p1_1d": _tiny(1, in_channels=64, in_size=64, out_channels=64, kernel_size=3, padding=1),
    },
    2: {case: CASES[case] for case in ("tiny_k2s2", "tiny_k3s2", "k3s1p1")},
    3: {
        "k2s2_3d": _tiny(3, in_channels=4, in_size=4, out_channels=4, kernel_size=2, stride=2),
        "k3s2p1op1_3d": _tiny(
            3, in_channels=3, in_size=(3, 5, 7), out_channels=5, kernel_size=3, stride=2, padding=1, output_padding=1
        ),
        "k3s1p1_3d": _tiny(3, in_channels=16, in_size=8, out_channels=16, kernel_size=3, padding=1),
    },
}

#: The Problem fields a child rebuilds each configuration from (sent as JSON).
_FIELDS = (
    "batch",
    "in_channels",
    "in_size",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "output_padding",
    "dilation",
    "groups",
    "layout",
)

_CHILD = r"""
import json, sys, time
import numpy, scipy, numba
import testbed
from testbed.testing import call_kwargs

name, cases = sys.argv[1], json.loads(sys.argv[2])
problems = [testbed.Problem(**fields, dtype="float32") for fields in cases]
start = time.perf_counter()
testbed.get_backend(name)
seconds = time.perf_counter() - start
for problem in problems:
    x, weight, bias = problem.random_arrays(0)
    conv_transpose = getattr(testbed, f"conv_transpose{problem.rank}d")
    times = []
    for _ in range(2):
        start = time.perf_counter()
        conv_transpose(x, weight, bias, backend=name, **call_kwargs(problem))
        times.append(time.perf_counter() - start)
    seconds += times[0] - times[1]
print(json.dumps(seconds))
"""


def first_call_seconds(backend, cache_dir, rank=2):
    """Run the child interpreter with ``NUMBA_CACHE_DIR=cache_dir``; its load + first-call seconds over the
    configurations of spatial ``rank``."""
    cases = [{name: getattr(problem, name) for name in _FIELDS} for problem in COMPILE_CASES[rank].values()]
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the first-call child for {backend} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class NumbaCompile:
    """Seconds from a fresh interpreter to the first results of ``numba_cpu``, without or with its cache, per
    spatial rank (a rank the backend does not declare is skipped)."""

    params = [["numba_cpu"], ["cold", "cached"], sorted(COMPILE_CASES)]
    param_names = ["backend", "cache", "rank"]
    timeout = 600

    def setup(self, backend, cache, rank):
        if backend not in testbed.list_backends():
            raise NotImplementedError(f"{backend} is not registered")
        impl = testbed.get_backend(backend)
        if not impl.available:
            raise NotImplementedError(f"{backend} is unavailable here: {impl.status}")
        for case, problem in COMPILE_CASES[rank].items():
            reason = impl.unsupported_reason(problem)
            if reason is not None:
                raise NotImplementedError(f"{backend} does not support {case}: {reason}")
        self.cache_dir = tempfile.TemporaryDirectory(prefix="numba-cache-")
        if cache == "cached":
            first_call_seconds(backend, self.cache_dir.name, rank)

    def teardown(self, backend, cache, rank):
        self.cache_dir.cleanup()

    def track_first_call_seconds(self, backend, cache, rank):
        return first_call_seconds(backend, self.cache_dir.name, rank)

    track_first_call_seconds.unit = "seconds"
