"""Shared fixtures: every test that takes ``backend_name`` runs once per registered backend.

A test whose reference is computed by some backend names it with ``@pytest.mark.reference_backends(name,
...)``; those backends are then not parametrised for it (a backend is never compared with itself).
``TESTBED_MUTANT=<name>`` replaces a registered backend with a deliberately broken one (tests/mutants.py), to
show that the suite fails. Helpers the tests import are in ``tests/helpers.py`` (a conftest is not imported).
"""

import os

import pytest

import testbed

if os.environ.get("TESTBED_MUTANT"):
    import mutants

    mutants.install(os.environ["TESTBED_MUTANT"])


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "reference_backends(*names): the test's reference is computed by these "
        "backends, so they are not parametrised (no backend checks itself)",
    )


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("reference_backends")
        references = set(marker.args) if marker else set()
        metafunc.parametrize("backend_name", [name for name in testbed.list_backends() if name not in references])


@pytest.fixture
def backend(backend_name):
    """The backend object; skipped (with the registry's reason) where it cannot run here."""
    impl = testbed.get_backend(backend_name)
    if not impl.available:
        pytest.skip(f"{backend_name}: {impl.status}")
    return impl


@pytest.fixture
def wisdom_file(tmp_path, monkeypatch):
    """A wisdom file of the test's own (``TESTBED_WISDOM`` in ``tmp_path``; returned, not created), no
    ``TESTBED_PLANNER``, and fresh planner and wisdom-store memories (undecided signatures, the file's view)."""
    from testbed import planner, wisdom

    path = tmp_path / "wisdom.json"
    monkeypatch.setenv("TESTBED_WISDOM", str(path))
    monkeypatch.delenv("TESTBED_PLANNER", raising=False)
    monkeypatch.setattr(planner, "_UNDECIDED", set())
    monkeypatch.setattr(wisdom, "_STORE", wisdom._Store())
    return path
