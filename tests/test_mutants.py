"""The suite fails when it should: each mutant ``col2im`` of tests/mutants.py makes the registry-parametrised
parity, property, capability and backward tests fail, the real ``col2im`` passes them, and the oracle tests of ``naive``
and ``col2im`` run, none skipped, with torch impossible to import.

Each check is a focused pytest run in a subprocess (the mutant is installed before collection, and torch must
be blocked before anything imports it).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mutants import MUTANTS

ROOT = Path(__file__).resolve().parent.parent
REGISTRY_TESTS = [
    "tests/test_parity.py",
    "tests/test_properties.py",
    "tests/test_capabilities.py",
    "tests/test_backward.py",
]


def run_pytest(args, *, mutant=None, block_torch=False):
    """``(exit code, output)`` of ``pytest -q args`` in a fresh interpreter at the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_MUTANT"}
    if mutant:
        env["TESTBED_MUTANT"] = mutant
    prelude = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code = prelude + f"import pytest; sys.exit(pytest.main({['-q', '-p', 'no:cacheprovider', *args]!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def counts(output):
    """The summary line's counts, e.g. ``{"passed": 184, "skipped": 0}``."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", output)}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_fails_the_suite(mutant):
    backend = MUTANTS[mutant][0]
    code, output = run_pytest(["-x", "-k", backend, *REGISTRY_TESTS], mutant=mutant)
    assert code == 1 and counts(output).get("failed", 0) >= 1, f"{mutant} was not caught:\n{output[-3000:]}"


def test_unmutated_backend_passes_the_same_tests():
    code, output = run_pytest(["-x", "-k", "col2im", *REGISTRY_TESTS])
    assert code == 0 and counts(output).get("passed", 0) > 0, output[-3000:]


def test_oracle_tests_run_without_torch():
    """With ``import torch`` failing, every non-torch parity and property test of naive and col2im runs."""
    code, output = run_pytest(
        ["-k", "(naive or col2im) and not torch", "tests/test_parity.py", "tests/test_properties.py"], block_torch=True
    )
    found = counts(output)
    assert code == 0 and found.get("passed", 0) >= 100 and found.get("skipped", 0) == 0, output[-3000:]
