"""``experiments.numba_cpu_paths``: its ISA-row and assembly helpers (the timing itself runs in the experiment)."""

import argparse

import pytest

from experiments import numba_cpu_paths as paths

# An AVX-512 channel loop as LLVM prints it (AT&T syntax): a weight vector load, two broadcasts, FMAs, a store.
ASM = """
foo:
        vmovups (%rdi), %zmm0
.LBB0_2:
        vmovups (%rax), %zmm4
        vbroadcastss (%rcx), %zmm5
        vfmadd231ps %zmm5, %zmm4, %zmm1
        vbroadcastss 4(%rcx), %zmm6
        vfmadd231ps %zmm6, %zmm4, %zmm2
        vfmadd231ps (%rdx){1to16}, %zmm4, %zmm3
        addq $64, %rax
        jne .LBB0_2
        vmovups %zmm1, (%rdi)
        retq
"""


def test_assembly_counts_read_the_inner_loop():
    loop = paths._inner_loop(ASM)
    assert loop[0].startswith(".LBB0_2:") and "jne" in loop[-1]
    fmas = [line for line in loop if "vfmadd" in line]
    assert len(fmas) == 3 and {line.split(",")[-1].strip() for line in fmas} == {"%zmm1", "%zmm2", "%zmm3"}
    assert sum(paths._is_load(line) for line in loop) == 4  # a vector, two broadcasts, a folded broadcast
    assert not paths._is_load("        vmovups %zmm1, (%rdi)")  # a store


def test_isa_rows_argument():
    assert paths.isa_list("all") == ["generic", "avx2", "avx512"]
    assert paths.isa_list("avx2, generic") == ["avx2", "generic"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown rows \\['sse'\\]"):
        paths.isa_list("sse")


def test_forced_backends_name_their_row_and_tile():
    assert paths.path_backend("blocked_direct", "avx512", 8).name == "numba_cpu:blocked_direct@avx512@mr8"
    assert paths.path_backend("direct").layouts == ("NCHW",)


def test_suite_jobs_and_table():
    """``--suite``: each unet3d case in both layouts beside the bare GEMM and torch (channels last: the
    channels_last_3d reference), each vocoder1d case beside torch; the table's ratios are those of the medians."""
    cases = paths.suite_jobs(["unet3d", "vocoder1d"])
    columns = [column for column, _, _ in cases["unet3d1"]]
    assert columns == [
        "numba_cpu NCDHW",
        "gemm NCDHW",
        "torch NCDHW",
        "numba_cpu NDHWC",
        "gemm NDHWC",
        "torch_channels_last NDHWC",
    ]
    assert [p.layout for _, p, _ in cases["unet3d1"]] == ["NCDHW"] * 3 + ["NDHWC"] * 3
    assert [column for column, _, _ in cases["voc1"]] == ["numba_cpu NCL", "torch NCL"]
    table = {case: {column: (2.0, 1.0) for column, _, _ in jobs} for case, jobs in cases.items()}
    table["unet3d1"]["numba_cpu NCDHW"] = (2.2, 2.0)
    text = paths.suite_markdown(table, cases)
    assert "| unet3d1 | nonoverlap_direct | 2.2 (2) | 2 (1) |" in text and "| 1.10 | 0.91 |" in text
    assert "| voc1 |" in text and text.count("\n|---") == 2
    with pytest.raises(SystemExit, match="--suite: unknown \\['unet'\\]"):
        paths.suite_jobs(["unet"])
