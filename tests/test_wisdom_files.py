"""Wisdom is never destroyed: an unreadable file is moved aside under a name no earlier backup has, and a file
written by a newer testbed is left byte-identical (its readable entries used, this process's decisions kept in
memory, one warning naming the version)."""

import json
import os
import warnings

import pytest

from helpers import DEC, UP
from testbed import wisdom

#: Every test against its own wisdom file (the ``wisdom_file`` fixture of tests/conftest.py).
pytestmark = pytest.mark.usefixtures("wisdom_file")


def _record(problem, backend):
    return wisdom.record(problem, "cpu", {"backend": backend, "median_s": {backend: 1e-3}})


def test_two_successive_corrupt_files_leave_two_backups(wisdom_file):
    """Before: both went to <file>.corrupt, the second replacing the first."""
    contents = [b'{"format": "testbed-wisdom", "vers', b"\x00\xff not json at all"]
    for content in contents:
        wisdom_file.write_bytes(content)
        with pytest.warns(wisdom.WisdomWarning, match="moved aside to .*wisdom.json.corrupt-"):
            _record(UP, "col2im")
        assert wisdom.lookup(UP)["backend"] == "col2im"
    backups = sorted(wisdom_file.parent.glob("wisdom.json.corrupt-*"))
    assert len(backups) == 2
    assert sorted(b.read_bytes() for b in backups) == sorted(contents)
    assert all(str(os.getpid()) in b.name for b in backups)


def test_a_backup_name_already_taken_is_never_replaced(wisdom_file, monkeypatch):
    """Two moves within one clock tick of one process still give two names."""

    class Frozen(wisdom._dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return wisdom._dt.datetime(2030, 1, 1, tzinfo=tz)

    monkeypatch.setattr(wisdom._dt, "datetime", Frozen)
    wisdom_file.write_text("one")
    first = wisdom._move_aside(wisdom_file)
    wisdom_file.write_text("two")
    second = wisdom._move_aside(wisdom_file)
    assert first != second and first.read_text() == "one" and second.read_text() == "two"
    assert not wisdom_file.exists()


@pytest.mark.parametrize("readable", [True, False])
def test_a_newer_version_file_is_left_byte_identical(wisdom_file, readable):
    """Before: a newer format counted as corrupt and the next write moved it aside (and replaced it)."""
    _record(DEC, "polyphase")
    data = json.loads(wisdom_file.read_text())
    data["version"] = wisdom.VERSION + 1
    if not readable:
        data["machines"] = ["a layout this testbed does not know"]
    wisdom_file.write_text(json.dumps(data, indent=3) + "\n")
    before = wisdom_file.read_bytes()
    wisdom._STORE.forget(wisdom_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = wisdom.lookup(DEC)
        _record(UP, "kron")  # kept in memory, not written
        _record(UP, "col2im")
        assert wisdom.lookup(UP)["backend"] == "col2im"
    assert wisdom_file.read_bytes() == before
    assert not list(wisdom_file.parent.glob("wisdom.json.corrupt*"))
    assert (entry is not None and entry["backend"] == "polyphase") == readable
    messages = [str(w.message) for w in caught if issubclass(w.category, wisdom.WisdomWarning)]
    assert len(messages) == 1, messages
    assert f"version {wisdom.VERSION + 1}" in messages[0] and "left untouched" in messages[0]


def test_the_source_hash_covers_backend_packages(tmp_path, monkeypatch):
    """A backend that is a package (numba_cpu/ with several files) changes the fingerprint when any file does."""
    fake = tmp_path / "testbed"
    (fake / "backends" / "pkg").mkdir(parents=True)
    (fake / "backends" / "mod.py").write_text("x = 1\n")
    (fake / "backends" / "pkg" / "__init__.py").write_text("y = 1\n")
    (fake / "backends" / "pkg" / "kernels.py").write_text("z = 1\n")
    monkeypatch.setattr(wisdom, "__file__", str(fake / "wisdom.py"))
    before = wisdom._backends_source_hash()
    (fake / "backends" / "pkg" / "kernels.py").write_text("z = 2\n")
    assert wisdom._backends_source_hash() != before
