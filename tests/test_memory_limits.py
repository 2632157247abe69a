"""Issue 21, item 5: every backend keeps one call's temporaries within :attr:`Problem.workspace_limit`
(max(``testbed.problem.WORKSPACE_BYTES``, twice the call's arrays)), the README's promise.

Before, ``fft`` held 716 MiB on 128→128 k3 @64² and 974 MiB on 256→128 k4 s2 @32² (2-4 MiB arrays, a 256 MiB
limit). Each backend is measured on those shapes and a U-Net up-convolution at the stated limit, and on the
same shapes with a quarter of the channels under a 16 MiB floor (so the limit binds at a scale where ``naive``,
the oracle, takes a second instead of ten).

How: in a fresh child per backend. glibc is told to serve every block above 64 KiB with its own mapping
(``MALLOC_MMAP_THRESHOLD_``, which also stops the threshold from adapting), so a temporary that is freed leaves
the resident set at once and the next one is counted again rather than reusing heap pages. Each case is called
once first (Numba compiles or loads its kernels, BLAS and torch set up their buffers), then the scratch buffers
kept between calls are released (so they count as temporaries), the peak-RSS mark is reset
(:func:`testbed.timing.reset_peak_rss`) and one call is measured: its temporaries are the peak resident set
minus the set before the call and the result's bytes. The resident set, not tracemalloc: tracemalloc sees
NumPy's allocations only, not pocketfft's C++ buffers (scipy's ``irfft2`` copies its input there), Numba's
arrays, torch's tensors or BLAS's buffers.
"""

import json
import textwrap

import pytest

from helpers import check, run_python

MIB = 2**20

#: name -> (Problem fields, testbed.problem.WORKSPACE_BYTES in the child). All float32, one image.
_ISSUE_SHAPES = {
    "128to128_k3_64": dict(in_channels=128, in_size=(64, 64), out_channels=128, kernel_size=3, padding=1),
    "256to128_k4s2_32": dict(in_channels=256, in_size=(32, 32), out_channels=128, kernel_size=4, stride=2,
                             padding=1),
    "unet_256to128_k2s2_32": dict(in_channels=256, in_size=(32, 32), out_channels=128, kernel_size=2, stride=2),
}
TIGHT_FLOOR = 16 * MIB
CASES = {
    **{name: (dict(shape, batch=1, dtype="float32"), 256 * MIB) for name, shape in _ISSUE_SHAPES.items()},
    **{f"quarter_{name}": (dict(shape, batch=1, dtype="float32", in_channels=shape["in_channels"] // 4,
                                out_channels=shape["out_channels"] // 4), TIGHT_FLOOR)
       for name, shape in _ISSUE_SHAPES.items()},
}
#: ``naive`` computes the full-size cases in 3-10 s each here (twice: the warm-up call); the quarter cases
#: bound its memory (the output plus one tap's products) as well.
SLOW = {"naive": "quarter_"}

CHILD = """
    import gc, json
    import testbed, testbed.problem
    from testbed.timing import peak_rss_bytes, reset_peak_rss, rss_bytes

    results = {}
    for case, (fields, floor) in cases.items():
        testbed.problem.WORKSPACE_BYTES = floor
        problem = testbed.Problem(**fields)
        reason = testbed.get_backend(name).unsupported_reason(problem)
        if reason is not None:
            results[case] = {"unsupported": reason}
            continue
        x, w, b = problem.random_arrays(0)
        params = {key: fields[key] for key in ("stride", "padding") if key in fields}
        testbed.conv_transpose2d(x, w, b, backend=name, **params)          # warm-up: compile, load, set up
        gc.collect()
        testbed.clear_workspace()
        before = rss_bytes()
        if not reset_peak_rss():
            results[case] = {"unmeasurable": "/proc/self/clear_refs cannot reset the peak-RSS mark here"}
            continue
        y = testbed.conv_transpose2d(x, w, b, backend=name, **params)
        results[case] = {"temporaries": peak_rss_bytes() - before - y.nbytes, "limit": problem.workspace_limit,
                         "arrays": problem.bytes_moved}
        del y
        gc.collect()
        testbed.clear_workspace()
    print(json.dumps(results))
"""

_measured: dict[str, dict] = {}


def measure(name):
    """Every case of :data:`CASES` (those :data:`SLOW` leaves) for backend ``name``, in one fresh child."""
    if name not in _measured:
        cases = {case: spec for case, spec in CASES.items() if case.startswith(SLOW.get(name, ""))}
        code = f"name, cases = {name!r}, {cases!r}\n" + textwrap.dedent(CHILD)
        env = {"MALLOC_MMAP_THRESHOLD_": "65536",
               "TESTBED_PLANNER": "estimate"}      # auto decides without timing workers (whose memory is theirs)
        _measured[name] = json.loads(check(run_python(code, env=env, timeout=600)).strip().splitlines()[-1])
    return _measured[name]


@pytest.mark.parametrize("case", CASES)
def test_peak_temporaries_within_workspace_limit(backend, case):
    if backend.device == "cuda":
        pytest.skip(f"{backend.name}: the host's resident set does not measure device memory (and in the CUDA "
                    f"simulator the arrays are the simulator's host copies)")
    if not case.startswith(SLOW.get(backend.name, "")):
        pytest.skip(f"{backend.name} takes seconds per call on the full-size shapes; measured on the quarter ones")
    result = measure(backend.name)[case]
    if "unsupported" in result:
        pytest.skip(f"{backend.name} declines {case}: {result['unsupported']}")
    if "unmeasurable" in result:
        pytest.skip(result["unmeasurable"])
    temporaries, limit = result["temporaries"], result["limit"]
    assert temporaries <= limit, (f"{backend.name} on {case}: {temporaries / MIB:.1f} MiB of temporaries, above the "
                                  f"workspace limit of {limit / MIB:.1f} MiB (arrays {result['arrays'] / MIB:.1f} MiB)")
