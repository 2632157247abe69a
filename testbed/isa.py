"""The instruction-set row this process computes for: ``generic`` (128-bit vectors), ``avx2`` (256-bit) or
``avx512`` (512-bit), decided once from the CPU that Numba compiles for.

Libraries whose speed lives in their kernels keep one micro-kernel and one set of blocking sizes per
architecture and pick them when they start: BLIS by ``bli_cpuid`` (its ``config/<arch>/bli_cntx_init_<arch>.c``),
OpenBLAS by its ``DYNAMIC_ARCH`` core detection, oneDNN by its ISA dispatch (capped with ``DNNL_MAX_CPU_ISA``).
This module is the neutral half of that for testbed: it knows CPUs, not kernels. The backends (``numba_cpu``'s
``blocking`` table), the planner's preference tables, the machine description and the wisdom fingerprint read
the row from here, so they all agree.

**The CPU.** The one Numba generates code for: ``numba.config.CPU_NAME`` and ``numba.config.CPU_FEATURES``
(``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``) where set, else llvmlite's host CPU name and feature string, exactly
as Numba's code generator resolves them (an explicit feature string wins over the CPU name; an empty one means
the named CPU's own features). So ``NUMBA_CPU_NAME=sapphirerapids NUMBA_CPU_FEATURES=""`` selects ``avx512`` on
any host, which is how the AVX-512 kernels are compiled and their assembly read on an AVX2 machine.

**The row.** ``avx512`` where the target has AVX-512F, ``avx2`` where it has AVX2 and FMA3, ``generic`` otherwise
(an aarch64 NEON host, an x86-64 without AVX2). ``TESTBED_ISA=generic|avx2|avx512`` caps it, as oneDNN's
``DNNL_MAX_CPU_ISA`` does, so that one host can run (and time) the lower rows. A cap above what the target
supports is refused, since the wider kernels would run legalised to narrower instructions and be timed as
something they are not; as for every ``TESTBED_*`` variable (:mod:`testbed._environ`), refused means one warning
naming the value, the CPU and its row, and the CPU's own row is used: an environment variable never breaks
``import testbed``. To run another row's kernels on purpose, ``numba_cpu.run_path(..., isa=row)``.

Examples
--------
>>> from testbed import isa
>>> isa.ISA_ROWS
('generic', 'avx2', 'avx512')
>>> isa.selected_isa() in isa.ISA_ROWS
True
>>> isa.vector_bytes("avx512"), isa.vector_bytes("avx2"), isa.vector_bytes("generic")
(64, 32, 16)
>>> isa.isa_of_cpu("sapphirerapids", ""), isa.isa_of_cpu("znver3", "+avx2,+fma,-avx512f")
('avx512', 'avx2')
"""

from __future__ import annotations

import functools
import os

from ._environ import env_choice, env_warning

__all__ = ["ISA_ENV", "ISA_ROWS", "host_isa", "isa_of_cpu", "selected_isa", "target_cpu", "vector_bytes"]

#: The rows, narrowest first (a cap keeps the rows up to and including its own).
ISA_ROWS = ("generic", "avx2", "avx512")
#: The environment variable that caps the row (read once, at the first :func:`selected_isa`).
ISA_ENV = "TESTBED_ISA"

#: Bytes of one vector register per row: xmm (SSE, NEON), ymm, zmm.
_VECTOR_BYTES = {"generic": 16, "avx2": 32, "avx512": 64}

#: LLVM x86 CPU names with AVX-512F (for a target named without a feature string).
_AVX512_CPUS = frozenset(
    {
        "knl",
        "knm",
        "skylake-avx512",
        "skx",
        "cascadelake",
        "cooperlake",
        "cannonlake",
        "icelake-client",
        "icelake-server",
        "rocketlake",
        "tigerlake",
        "sapphirerapids",
        "emeraldrapids",
        "graniterapids",
        "graniterapids-d",
        "diamondrapids",
        "znver4",
        "znver5",
        "x86-64-v4",
    }
)
#: ... and those with AVX2 and FMA3 but not AVX-512F.
_AVX2_CPUS = frozenset(
    {
        "haswell",
        "broadwell",
        "skylake",
        "alderlake",
        "raptorlake",
        "meteorlake",
        "arrowlake",
        "arrowlake-s",
        "lunarlake",
        "pantherlake",
        "gracemont",
        "sierraforest",
        "grandridge",
        "clearwaterforest",
        "bdver4",
        "znver1",
        "znver2",
        "znver3",
        "x86-64-v3",
    }
)


def vector_bytes(row: str | None = None) -> int:
    """Bytes of one vector register of ``row`` (default: :func:`selected_isa`): 16, 32 or 64."""
    row = selected_isa() if row is None else row
    if row not in _VECTOR_BYTES:
        raise ValueError(f"row: expected one of {', '.join(ISA_ROWS)}, got {row!r}")
    return _VECTOR_BYTES[row]


def target_cpu() -> tuple[str, str]:
    """``(name, features)`` of the CPU Numba compiles for, resolved as Numba's code generator does:
    ``numba.config.CPU_NAME`` / ``CPU_FEATURES`` where set, else llvmlite's host CPU name and features."""
    import llvmlite.binding as llvm
    import numba

    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return str(name), str(features)


def isa_of_cpu(name: str, features: str) -> str:
    """The widest row a CPU ``name`` with LLVM feature string ``features`` (``"+avx2,-avx512f,…"``) supports.

    The name gives the CPU's own features (for a target named without a feature string); explicit features
    override it, as they do in LLVM."""
    flags = {flag.strip() for flag in features.split(",") if flag.strip()}
    name = name.lower()
    row = "avx512" if name in _AVX512_CPUS else "avx2" if name in _AVX2_CPUS else "generic"
    if "+avx512f" in flags:
        row = "avx512"
    elif "-avx512f" in flags and row == "avx512":
        row = "avx2"
    if {"-avx2", "-fma", "-avx"} & flags:
        row = "generic"
    elif row == "generic" and {"+avx2", "+fma"} <= flags:
        row = "avx2"
    return row


def host_isa() -> str:
    """The widest row the CPU Numba compiles for supports (:func:`target_cpu`), ignoring ``TESTBED_ISA``."""
    return isa_of_cpu(*target_cpu())


@functools.lru_cache(maxsize=1)
def selected_isa() -> str:
    """The row this process uses: :func:`host_isa`, capped by ``TESTBED_ISA`` where set (decided once per
    process; kernels compiled for one row and keyed by it must not meet another).

    A ``TESTBED_ISA`` that is not one of :data:`ISA_ROWS`, or names a row wider than the CPU supports, gives
    one :class:`~testbed._environ.EnvironmentVariableWarning` (naming the value and the rows this CPU
    accepts) and the CPU's own row is used (:mod:`testbed._environ`'s policy).
    """
    native = host_isa()
    cap = env_choice(ISA_ENV, ISA_ROWS, native)
    if ISA_ROWS.index(cap) > ISA_ROWS.index(native):
        name, _ = target_cpu()
        env_warning(
            ISA_ENV,
            os.environ[ISA_ENV],
            f"{', '.join(ISA_ROWS[: ISA_ROWS.index(native) + 1])}: {cap!r} is "
            f"above what the CPU supports ({name!r}, the CPU Numba compiles for, has {native!r}; set "
            f"NUMBA_CPU_NAME/NUMBA_CPU_FEATURES to compile for another CPU)",
            native,
        )
        return native
    return cap
