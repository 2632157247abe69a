"""Issue 21, item 5: every backend keeps one call's temporaries within :attr:`Problem.workspace_limit`
(max(``testbed.problem.WORKSPACE_BYTES``, twice the call's arrays)), the README's promise.

Before, ``fft`` held 716 MiB on 128→128 k3 @64² and 974 MiB on 256→128 k4 s2 @32² (2-4 MiB arrays, a 256 MiB
limit), and ``col2im`` twice its column buffer where the limit binds. Two kinds of case:

* **stated limit**: those shapes and a U-Net up-convolution at the default 256 MiB floor, measured by the
  resident set, which sees every allocation (pocketfft's C++ buffers, Numba's arrays, torch's tensors, BLAS);
* **binding limit**: the same shapes with a quarter of the channels and no floor, so the limit is twice the
  call's arrays (1.5-2 MiB) and blocks must shrink to fit; measured by tracemalloc, which counts NumPy's
  allocations to the byte (at this size a page-granular resident set would be noise), so it checks the NumPy
  backends (and ``naive``, the oracle, in a second instead of ten); allocations outside NumPy are the first
  kind's to check. 1-D and 3-D shapes (issue 23) are of this kind.

How: in a fresh child per backend. glibc is told to serve every block above 64 KiB with its own mapping
(``MALLOC_MMAP_THRESHOLD_``, which also stops the threshold from adapting), so a temporary that is freed leaves
the resident set at once and the next one is counted again rather than reusing heap pages. Each case is called
once first (Numba compiles or loads its kernels, BLAS and torch set up their buffers), then the scratch buffers
kept between calls are released (so they count as temporaries), the peak-RSS mark is reset
(:func:`testbed.timing.reset_peak_rss`) and one call is measured, then one more under tracemalloc: the
temporaries are the peak minus what was held before the call and the result's bytes.
"""

import json
import textwrap

import pytest

from helpers import check, run_python

MIB = 2**20

#: All float32, one image.
_ISSUE_SHAPES = {
    "128to128_k3_64": dict(in_channels=128, in_size=(64, 64), out_channels=128, kernel_size=3, padding=1),
    "256to128_k4s2_32": dict(in_channels=256, in_size=(32, 32), out_channels=128, kernel_size=4, stride=2, padding=1),
    "unet_256to128_k2s2_32": dict(in_channels=256, in_size=(32, 32), out_channels=128, kernel_size=2, stride=2),
}
#: name -> (Problem fields, testbed.problem.WORKSPACE_BYTES in the child, the measure asserted).
CASES = {
    **{name: (dict(shape, batch=1, dtype="float32"), 256 * MIB, "rss") for name, shape in _ISSUE_SHAPES.items()},
    **{
        f"binding_{name}": (
            dict(
                shape,
                batch=1,
                dtype="float32",
                in_channels=shape["in_channels"] // 4,
                out_channels=shape["out_channels"] // 4,
            ),
            0,
            "traced",
        )
        for name, shape in _ISSUE_SHAPES.items()
    },
    # 1-D and 3-D, binding limit only (at the 256 MiB floor a shape large enough to matter takes seconds per
    # call in naive, which auto runs at these ranks until a faster backend computes them): a stride-1 shape
    # that fft computes in shrunk blocks, and a vocoder / U-Net 3-D up-sampling (quarter channels) whose
    # stride-dilated transforms fft declines.
    **{
        f"binding_{name}": (dict(shape, batch=1, dtype="float32"), 0, "traced")
        for name, shape in {
            "1d_32to32_k7_2048": dict(in_channels=32, in_size=(2048,), out_channels=32, kernel_size=7, padding=3),
            "vocoder1d_64to32_k16s8_256": dict(
                in_channels=64, in_size=(256,), out_channels=32, kernel_size=16, stride=8, padding=4
            ),
            "3d_16to16_k3_12": dict(in_channels=16, in_size=(12, 12, 12), out_channels=16, kernel_size=3, padding=1),
            "unet3d_32to16_k2s2_12": dict(
                in_channels=32, in_size=(12, 12, 12), out_channels=16, kernel_size=2, stride=2
            ),
        }.items()
    },
}
#: ``naive`` computes the full-size cases in 3-10 s each here (twice: the warm-up call); the binding cases
#: bound its memory (the output plus one tap's products) as well.
SLOW = {"naive": "binding_"}

CHILD = """
    import gc, json, tracemalloc
    import testbed, testbed.problem
    from testbed.timing import peak_rss_bytes, reset_peak_rss, rss_bytes

    results = {}
    for case, (fields, floor, _) in cases.items():
        testbed.problem.WORKSPACE_BYTES = floor
        problem = testbed.Problem(**fields)
        reason = testbed.get_backend(name).unsupported_reason(problem)
        if reason is not None:
            results[case] = {"unsupported": reason}
            continue
        x, w, b = problem.random_arrays(0)
        params = {key: fields[key] for key in ("stride", "padding") if key in fields}
        conv_transpose = getattr(testbed, f"conv_transpose{problem.rank}d")
        conv_transpose(x, w, b, backend=name, **params)                     # warm-up: compile, load, set up
        gc.collect()
        testbed.clear_workspace()
        before = rss_bytes()
        resettable = reset_peak_rss()              # else the peak is the process's: nothing to learn from it
        y = conv_transpose(x, w, b, backend=name, **params)
        rss = peak_rss_bytes() - before - y.nbytes if resettable else None
        del y
        gc.collect()
        testbed.clear_workspace()
        tracemalloc.start()
        y = conv_transpose(x, w, b, backend=name, **params)
        traced = tracemalloc.get_traced_memory()[1] - y.nbytes
        tracemalloc.stop()
        results[case] = {"rss": rss, "traced": traced, "limit": problem.workspace_limit,
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
        env = {
            "MALLOC_MMAP_THRESHOLD_": "65536",
            "TESTBED_PLANNER": "estimate",
        }  # auto decides without timing workers (whose memory is theirs)
        _measured[name] = json.loads(check(run_python(code, env=env, timeout=600)).strip().splitlines()[-1])
    return _measured[name]


@pytest.mark.parametrize("case", CASES)
def test_peak_temporaries_within_workspace_limit(backend, case):
    if backend.device == "cuda":
        pytest.skip(
            f"{backend.name}: the host's resident set does not measure device memory (and in the CUDA "
            f"simulator the arrays are the simulator's host copies)"
        )
    if not case.startswith(SLOW.get(backend.name, "")):
        pytest.skip(f"{backend.name} takes seconds per call on the full-size shapes; measured on the binding ones")
    result = measure(backend.name)[case]
    if "unsupported" in result:
        pytest.skip(f"{backend.name} declines {case}: {result['unsupported']}")
    kind = CASES[case][2]
    temporaries, limit = result[kind], result["limit"]
    if temporaries is None:
        pytest.skip("/proc/self/clear_refs cannot reset the peak-RSS mark here")
    assert temporaries <= limit, (
        f"{backend.name} on {case}: {temporaries / MIB:.2f} MiB of temporaries ({kind}), "
        f"above the workspace limit of {limit / MIB:.2f} MiB (arrays "
        f"{result['arrays'] / MIB:.2f} MiB)"
    )
