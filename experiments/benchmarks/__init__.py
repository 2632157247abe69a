"""asv benchmarks: speed, peak memory, throughput and accuracy of every registered backend, tracked over commits.

Every benchmark is parametrised over ``testbed.list_backends()`` (read when asv imports this package), so a new
backend is benchmarked without edits here. A combination that cannot run raises ``NotImplementedError`` in
``setup``, asv's convention for "skip": an unsupported configuration, a backend unavailable here (no GPU), the
CUDA simulator (never timed), or a slow reference backend on a large case (see ``common.SLOW_ON_LARGE``).

Modules: ``bench_conv`` (``time_``: wall time in ``Speed``, ``LayoutAndOut`` and ``SpeedByRank`` (one case of each
spatial rank, 1-D/2-D/3-D, channels first and last), CPU time in ``CPUTime``; ``peakmem_``; GFLOP/s and
relative-error ``track_``), ``bench_compile`` (cold and cached first-call time of the Numba backends, per rank). A
backend skips the ranks it does not declare (``Backend.ranks``), as it skips any configuration it declines. The
time benchmarks sample with asv's own attributes (``common.TimedSampling``), so asv keeps their results (it
discards ``--quick`` runs). Run them with ``asv`` from the repository root (configuration: ``asv.conf.json``; the
Makefile's ``bench*`` targets); ``tests/test_benchmarks.py`` runs every body once without asv, and ``asv check`` is
part of ``make test``.
"""
