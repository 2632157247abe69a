"""``testbed.isa``: the instruction-set row from the CPU Numba compiles for, and ``TESTBED_ISA``'s cap."""

import numba
import pytest

from testbed import _environ, isa


@pytest.fixture
def fresh(monkeypatch):
    """``selected_isa`` decided anew under the test's environment and target, and again after it."""
    isa.selected_isa.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    isa.selected_isa.cache_clear()


@pytest.mark.parametrize(
    ("name", "features", "row"),
    [
        ("sapphirerapids", "", "avx512"),
        ("znver4", "", "avx512"),
        ("skylake-avx512", "+avx512f,-avx512vnni", "avx512"),
        ("sapphirerapids", "+avx2,+fma,-avx512f", "avx2"),  # a named CPU with AVX-512 switched off
        ("znver3", "+avx,+avx2,+fma,-avx512f", "avx2"),  # this project's AMD host, as llvmlite reports it
        ("haswell", "", "avx2"),
        ("x86-64", "+avx2,+fma", "avx2"),
        ("haswell", "-avx2", "generic"),
        ("x86-64", "", "generic"),
        ("generic", "", "generic"),
        ("neoverse-v1", "+neon,+sve", "generic"),
        ("icelake-server", "+avx512f,-fma", "generic"),
    ],
)
def test_row_of_a_cpu(name, features, row):
    assert isa.isa_of_cpu(name, features) == row


def test_target_follows_numba_config(fresh):
    fresh.setattr(numba.config, "CPU_NAME", "sapphirerapids", raising=False)
    fresh.setattr(numba.config, "CPU_FEATURES", "", raising=False)
    assert isa.target_cpu() == ("sapphirerapids", "")
    assert isa.host_isa() == isa.selected_isa() == "avx512"
    assert isa.vector_bytes() == 64
    fresh.setattr(numba.config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f")
    isa.selected_isa.cache_clear()
    assert isa.selected_isa() == "avx2"


@pytest.mark.parametrize("cap", isa.ISA_ROWS)
def test_cap(fresh, cap):
    fresh.setattr(numba.config, "CPU_NAME", "sapphirerapids", raising=False)
    fresh.setattr(numba.config, "CPU_FEATURES", "", raising=False)
    fresh.setenv(isa.ISA_ENV, cap.upper())
    assert isa.selected_isa() == cap
    assert isa.host_isa() == "avx512"


def test_cap_above_the_cpu_names_both(fresh):
    fresh.setattr(numba.config, "CPU_NAME", "haswell", raising=False)
    fresh.setattr(numba.config, "CPU_FEATURES", "", raising=False)
    fresh.setenv(isa.ISA_ENV, "avx512")
    fresh.setattr(_environ, "_warned", set())  # each bad value warns once per process
    with pytest.warns(
        RuntimeWarning,
        match=r"TESTBED_ISA='avx512'.*generic, avx2: 'avx512' is above.*'haswell'.*"
        r"'avx2'.*using the default 'avx2'",
    ):
        assert isa.selected_isa() == "avx2"  # a warning and the CPU's own row (testbed._environ)


@pytest.mark.parametrize("value", ["sse", "avx-512", "1"])
def test_unknown_cap(fresh, value):
    fresh.setenv(isa.ISA_ENV, value)
    fresh.setattr(_environ, "_warned", set())
    with pytest.warns(RuntimeWarning, match=rf"TESTBED_ISA='{value}': accepted values are generic, avx2, avx512"):
        assert isa.selected_isa() == isa.host_isa()


def test_vector_bytes_refuses_unknown_rows():
    with pytest.raises(ValueError, match="row: expected one of generic, avx2, avx512, got 'sse'"):
        isa.vector_bytes("sse")


def test_this_host_row_is_what_its_target_supports():
    """Without a cap the row is the target's widest (no silent narrowing)."""
    import os

    if os.environ.get(isa.ISA_ENV):
        pytest.skip("TESTBED_ISA is set")
    assert isa.selected_isa() == isa.host_isa() == isa.isa_of_cpu(*isa.target_cpu())
