"""First-call cost of the Numba CPU backend: cold compilation, and loading from numba's on-disk cache.

Every other benchmark warms up in setup, so compilation never reaches their timings; this one tracks it on
purpose. Each measurement runs in a fresh interpreter whose ``NUMBA_CACHE_DIR`` is a new temporary folder
(``cold``: nothing cached) or one that a previous interpreter filled (``cached``: what ``cache=True`` buys a
user's second session). The child imports numpy, scipy, numba and testbed first (identical for every
backend); the tracked value is the time to load the backends (``get_backend``, where eagerly compiled kernels
would compile) plus, for each of a few configurations, the first call minus the second call.
"""

import json
import os
import subprocess
import sys
import tempfile

import testbed
from testbed.testing import call_kwargs

from .common import CASES

#: Configurations that differ in kind (stride == kernel; tiny channel counts; a general stride-1 layer), so a
#: backend with one kernel per kind of configuration compiles each of them.
COMPILE_CASES = ["tiny_k2s2", "tiny_k3s2", "k3s1p1"]

_CHILD = r"""
import json, sys, time
import numpy, scipy, numba
import testbed
from testbed.cases import SUITES

name, cases, kwargs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
problems = {case: problem for suite in SUITES.values() for case, problem in suite.items()}
start = time.perf_counter()
testbed.get_backend(name)
seconds = time.perf_counter() - start
for case in cases:
    x, weight, bias = problems[case].random_arrays(0)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        testbed.conv_transpose2d(x, weight, bias, backend=name, **kwargs[case])
        times.append(time.perf_counter() - start)
    seconds += times[0] - times[1]
print(json.dumps(seconds))
"""


def first_call_seconds(backend, cache_dir):
    """Run the child interpreter with ``NUMBA_CACHE_DIR=cache_dir``; its load + first-call seconds."""
    kwargs = {case: call_kwargs(CASES[case]) for case in COMPILE_CASES}
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, json.dumps(COMPILE_CASES), json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the first-call child for {backend} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class NumbaCompile:
    """Seconds from a fresh interpreter to the first results of ``numba_cpu``, without or with its cache."""

    params = [["numba_cpu"], ["cold", "cached"]]
    param_names = ["backend", "cache"]
    timeout = 600

    def setup(self, backend, cache):
        if backend not in testbed.list_backends():
            raise NotImplementedError(f"{backend} is not registered")
        impl = testbed.get_backend(backend)
        if not impl.available:
            raise NotImplementedError(f"{backend} is unavailable here: {impl.status}")
        self.cache_dir = tempfile.TemporaryDirectory(prefix="numba-cache-")
        if cache == "cached":
            first_call_seconds(backend, self.cache_dir.name)

    def teardown(self, backend, cache):
        self.cache_dir.cleanup()

    def track_first_call_seconds(self, backend, cache):
        return first_call_seconds(backend, self.cache_dir.name)

    track_first_call_seconds.unit = "seconds"
