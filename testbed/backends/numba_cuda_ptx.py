"""Compile every numba.cuda kernel to PTX and assemble it with ``ptxas -v``: real compilation, no GPU needed.

``numba.cuda.compile_ptx(py_func, signature, cc=...)`` runs NVVM; ``ptxas -arch=sm_XY -v`` turns the PTX into
machine code and reports per kernel the registers, static shared memory (the tiled kernel's shared memory
is dynamic, sized at launch by ``numba_cuda.tiled_plan``, so it reports 0 here), stack frame and spills.

    python -m testbed.backends.numba_cuda_ptx [--cc 9.0]

prints that table. Must run without the simulator (the simulator has no compiler).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["kernel_signature", "compile_kernel_ptx", "assemble", "ptxas_table", "PtxasResources"]

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PtxasResources:
    kernel: str
    dtype: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int


def kernel_signature(name: str, dtype: str):
    """The argument types the host wrapper (``numba_cuda``) launches kernel ``name`` with: C-contiguous 1-D
    arrays of ``dtype`` (the flattened tensors), a bool, and uint32 extents (tuples in the field order of
    ``numba_cuda_layout``)."""
    from numba import types

    from .numba_cuda_layout import CHUNK_FIELDS, DEPTH_FIELDS, GEOMETRY_FIELDS, SHAPE_FIELDS

    array = types.Array(getattr(types, dtype), 1, "C")
    shape, geometry, depth, chunks = (
        types.UniTuple(types.uint32, len(fields))
        for fields in (SHAPE_FIELDS, GEOMETRY_FIELDS, DEPTH_FIELDS, CHUNK_FIELDS)
    )
    signatures = {
        "gather": (array, array, array, array, types.boolean, shape, geometry),  # x, weight, bias, y, …
        "gather3d": (array, array, array, array, types.boolean, shape, geometry, depth),
        "fill_zero": (array,),  # y
        "add_bias": (array, array, types.uint32, types.uint32),  # bias, y, C_out, H·W
        "scatter_atomic": (array, array, array, shape, geometry),  # x, weight, y, …
        "tiled_gather": (array, array, array, array, types.boolean, shape, geometry, chunks),
        "backward_data": (array, array, array, shape, geometry),  # grad_output, weight, grad_input, …
        "backward_data3d": (array, array, array, shape, geometry, depth),
        "backward_weight": (array, array, array, types.uint32, shape, geometry),  # grad_output, x, grad_weight, N, …
        "backward_weight3d": (array, array, array, types.uint32, shape, geometry, depth),
    }
    return types.void(*signatures[name])


def compile_kernel_ptx(name: str, dtype: str, cc=(9, 0)) -> str:
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        raise RuntimeError("compile_ptx needs the real CUDA target; unset NUMBA_ENABLE_CUDASIM")
    from .numba_cuda_kernels import KERNELS

    ptx, _ = cuda.compile_ptx(KERNELS[name][dtype], kernel_signature(name, dtype), cc=cc)
    return ptx


_VERSION = re.compile(r"^\.version \d+\.\d+", re.MULTILINE)
_UNSUPPORTED_VERSION = re.compile(r"Unsupported \.version \d+\.\d+; current version is '(\d+\.\d+)'")
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(.*)")
_SMEM = re.compile(r"(\d+) bytes smem")


def _run_ptxas(ptxas: str, ptx: str, arch: str):
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", str(source), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
        )
    return done.returncode, done.stdout + done.stderr


def assemble(ptx: str, arch: str = "sm_90", ptxas: str | None = None) -> tuple[int, int, int, int, int]:
    """Assemble ``ptx`` (one entry) with ``ptxas -v``: ``(registers, smem bytes, stack, spill stores,
    spill loads)``; RuntimeError with ptxas's output if it fails.

    The pip NVVM numba uses can be newer than the system ptxas (here NVVM 13.5 writes ``.version 9.5``,
    ptxas 13.0 reads up to 9.0). Then the ``.version`` directive is lowered to the one ptxas names and the
    PTX assembled again: ptxas still rejects any instruction its ISA version lacks."""
    ptxas = ptxas or shutil.which("ptxas")
    if ptxas is None:
        raise FileNotFoundError("ptxas is not on PATH")
    code, report = _run_ptxas(ptxas, ptx, arch)
    newest = _UNSUPPORTED_VERSION.search(report)
    if code != 0 and newest:
        code, report = _run_ptxas(ptxas, _VERSION.sub(f".version {newest.group(1)}", ptx, count=1), arch)
    if code != 0:
        raise RuntimeError(f"ptxas -arch={arch} failed ({code}):\n{report}")
    entries = _ENTRY.findall(report)
    frame, used = _FRAME.search(report), _USED.search(report)
    if len(entries) != 1 or frame is None or used is None:
        raise RuntimeError(f"unexpected ptxas -v report (one entry expected):\n{report}")
    smem = _SMEM.search(used.group(2))
    stack, stores, loads = (int(v) for v in frame.groups())
    return int(used.group(1)), int(smem.group(1)) if smem else 0, stack, stores, loads


def ptxas_table(cc=(9, 0)) -> list[PtxasResources]:
    """Every kernel × dtype, compiled for ``cc`` and assembled for ``sm_<cc>``."""
    from .numba_cuda_kernels import KERNELS

    arch = f"sm_{cc[0]}{cc[1]}"
    rows = []
    for name, by_dtype in KERNELS.items():
        for dtype in by_dtype:
            rows.append(PtxasResources(name, dtype, *assemble(compile_kernel_ptx(name, dtype, cc), arch)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 (sm_90) or 8.0")
    args = parser.parse_args(argv)
    major, minor = (int(v) for v in args.cc.split("."))
    columns = [field.name for field in fields(PtxasResources)]
    cells = [columns] + [[str(getattr(row, c)) for c in columns] for row in ptxas_table((major, minor))]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    print(f"ptxas -arch=sm_{major}{minor} -v (shared memory: static only; tiled_gather's is dynamic)")
    for line in cells:
        print("  ".join(value.rjust(width) for value, width in zip(line, widths)))


if __name__ == "__main__":
    main()
