"""``numba_cpu``'s backward pass (data + weight gradients) against PyTorch's, side by side in fresh processes.

    python -m experiments.backward_speed [--suite unet] [--layouts NCHW,NHWC] [--rounds 3] [--budget 1.0]
                                         [--dtype float32] [--threads N]

For every case of the suite (default ``unet``: the four U-Net up-convolutions, batch 1) and layout, times

* ``numba_cpu``: :func:`testbed.conv_transpose_backward` with ``output_mask=(True, True, False)`` and
  ``backend="numba_cpu"`` (the public call, validation included);
* ``torch``: ``torch.ops.aten.convolution_backward(..., transposed=True, output_mask=(True, True, False))``
  directly (what autograd runs for ``conv_transpose2d``; channels last: the ``channels_last`` views of the same
  memory), on PyTorch's default thread count,

each in its own fresh worker process (:func:`testbed.timing.run_in_worker`, :func:`testbed.timing.time_call`),
the two taking turns for ``--rounds`` rounds (A B, B A, ...) so that a stretch of other load on a shared host
falls on both; the samples of a cell's rounds are pooled. Prints a markdown table of median (min) ms and
torch's median over numba_cpu's (above 1: numba_cpu faster), with the host and the load average before and
after. ``--threads N`` sets ``NUMBA_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and torch's threads to ``N`` in the
workers.

Measured (``--rounds 3 --budget 0.5``, float32, batch 1; 2-core AMD EPYC (Zen 3, AVX2) shared with other jobs, load
average 5-7 during the two-thread run, 3-5 during the one-thread one; median (min) ms, torch's median over
numba_cpu's):

=====  ======  ==========================  ==========================  =====
case   layout  numba_cpu                   torch                       ratio
=====  ======  ==========================  ==========================  =====
(two threads: the default)
unet1  NCHW    636 (524)                   751 (512)                   1.18
unet1  NHWC    651 (591)                   1560 (1070)                 2.40
unet2  NCHW    512 (436)                   624 (459)                   1.22
unet2  NHWC    359 (241)                   957 (756)                   2.66
unet3  NCHW    228 (195)                   260 (200)                   1.14
unet3  NHWC    208 (179)                   702 (487)                   3.38
unet4  NCHW    304 (289)                   524 (433)                   1.72
unet4  NHWC    276 (241)                   912 (771)                   3.31
(one thread: ``--threads 1 --layouts NCHW``)
unet1  NCHW    189 (167)                   223 (190)                   1.18
unet2  NCHW    111 (77.3)                  106 (86.5)                  0.96
unet3  NCHW    79.2 (76.3)                 141 (132)                   1.78
unet4  NCHW    193 (187)                   372 (273)                   1.93
=====  ======  ==========================  ==========================  =====

Both are GEMM-bound there (unet2 on one thread: 5.7 GFLOP in ~110 ms, ~50 GFLOP/s, for each); numba_cpu's
overhead over its two GEMMs is packing the output gradient's columns once per gradient (the pixel unshuffle,
memory-bound). Channels last numba_cpu packs straight from the NHWC arrays; torch's time there is that of its own
``channels_last`` route (2-3× its NCHW time on this host).
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from testbed import cases, timing
from testbed.problem import LAYOUTS_BY_RANK
from testbed.testing import call_kwargs

PEERS = ("numba_cpu", "torch")


def _torch_backward(grad_output, x, weight, problem):
    import torch

    def channels_first(array):
        tensor = torch.from_numpy(array)
        return tensor.permute(0, problem.rank + 1, *range(1, problem.rank + 1)) if problem.channels_last else tensor

    go, x_t, w_t = channels_first(grad_output), channels_first(x), torch.from_numpy(weight)
    transposed, mask = True, [True, True, False]
    parameters = [list(problem.stride), list(problem.padding), list(problem.dilation)]
    arguments = (*parameters, transposed, list(problem.output_padding), problem.groups, mask)

    def call():
        with torch.no_grad():
            return torch.ops.aten.convolution_backward(go, x_t, w_t, None, *arguments)

    return call


def time_peer(problem, peer: str, settings: timing.TimingSettings, threads: int | None) -> dict:
    """In a worker: the statistics (per-call samples kept) of ``peer``'s data + weight gradients of ``problem``."""
    x, weight, _ = problem.random_arrays(0)
    grad_output = np.random.default_rng(1).standard_normal(problem.output_shape).astype(problem.dtype)
    if peer == "torch":
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        call = _torch_backward(grad_output, x, weight, problem)
    else:
        from testbed import conv_transpose_backward

        kwargs = call_kwargs(problem)

        def call():
            return conv_transpose_backward(
                grad_output, x, weight, output_mask=(True, True, False), backend=peer, **kwargs
            )

    return timing.time_call(call, settings, keep_samples=True)


def host() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def measure(problems: dict, layouts, settings, rounds: int, threads: int | None) -> dict:
    """``{(case, layout): {peer: samples}}``, the peers taking turns in fresh workers."""
    table = {}
    for name, problem in problems.items():
        for layout in layouts:
            laid = problem.with_(layout=layout)
            samples: dict[str, list] = {peer: [] for peer in PEERS}
            for r in range(rounds):
                for peer in PEERS if r % 2 == 0 else PEERS[::-1]:
                    row = timing.run_in_worker(time_peer, laid, peer, settings, threads)
                    samples[peer].extend(row["samples_s"])
            table[name, layout] = samples
            print(
                f"  {name} {layout}: " + ", ".join(f"{p} {1e3 * np.median(s):.3g} ms" for p, s in samples.items()),
                flush=True,
            )
    return table


def markdown(table: dict) -> str:
    lines = ["| case | layout | numba_cpu ms | torch ms | torch / numba_cpu |", "|---|---|---|---|---|"]
    for (name, layout), samples in table.items():
        ours, theirs = (np.asarray(samples[p]) * 1e3 for p in PEERS)
        lines.append(
            f"| {name} | {layout} | {np.median(ours):.3g} ({ours.min():.3g}) | {np.median(theirs):.3g} "
            f"({theirs.min():.3g}) | {np.median(theirs) / np.median(ours):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="unet")
    parser.add_argument("--layouts", default="NCHW,NHWC", help="channels first/last family names, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of samples per worker")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", default=None, help="comma-separated case names of the suite (default all)")
    args = parser.parse_args(argv)
    problems = {name: p.with_(dtype=np.dtype(args.dtype)) for name, p in cases.suite(args.suite).items()}
    if args.cases:
        problems = {name: problems[name] for name in args.cases.split(",")}
    rank = next(iter(problems.values())).rank
    families = {"NCHW": 0, "NHWC": 1}
    layouts = [LAYOUTS_BY_RANK[rank][families[f]] for f in args.layouts.split(",")]
    settings = timing.TimingSettings(budget_s=args.budget, warmup_s=0.5, min_repeats=5, max_repeats=60)
    if args.threads is not None:  # read by Numba and OpenBLAS when the workers import them
        os.environ["NUMBA_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    before = os.getloadavg()
    print(f"host: {host()}; load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}", flush=True)
    table = measure(problems, layouts, settings, args.rounds, args.threads)
    after = os.getloadavg()
    print(f"load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}\n")
    print(markdown(table))


if __name__ == "__main__":
    main()
