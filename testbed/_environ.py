"""One policy for the ``TESTBED_*`` environment variables: a malformed value never breaks anything.

Every variable testbed reads goes through one of :func:`env_choice`, :func:`env_int` or :func:`env_flag`. A value
that is unset, empty or only spaces means the default. A value that cannot be read gives one
:class:`EnvironmentVariableWarning` per process (naming the variable, the value and what is accepted) and the
default is used: ``import testbed`` and every call keep working. The variables (:data:`VARIABLES`):

===========================  ========================================  ==========================================
variable                     accepted values                           default and meaning
===========================  ========================================  ==========================================
``TESTBED_PLANNER``          ``estimate``, ``measure``                 ``estimate``: how ``auto`` decides
                                                                       (:func:`testbed.set_planner`)
``TESTBED_WISDOM``           a file path, or ``off``/``none``/``0``    the user cache folder's ``wisdom.json``;
                                                                       ``off`` keeps wisdom in memory only
``TESTBED_WORKSPACE_BYTES``  an integer >= 0 (bytes)                   268435456 (256 MiB) of scratch buffers
                                                                       kept per thread; 0 keeps none
``TESTBED_NUMBA_CACHE``      ``1``/``on``/``true``/``yes`` or          on: kernels use Numba's on-disk cache
                             ``0``/``off``/``false``/``no``
``TESTBED_ISA``              ``generic``, ``avx2``, ``avx512``, at     the CPU's row (:mod:`testbed.isa`): the
                             most the CPU's own row                    widest vector instructions assumed
===========================  ========================================  ==========================================

Values are read with surrounding spaces removed and, for words, in any case (``Measure`` is ``measure``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TypeVar, overload

__all__ = ["EnvironmentVariableWarning", "FLAG_WORDS", "VARIABLES", "env_choice", "env_flag", "env_int", "env_warning"]

T = TypeVar("T")

#: The words a yes/no variable accepts, and what each means.
FLAG_WORDS = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}

#: Every ``TESTBED_*`` variable testbed reads: name -> (accepted values, default and meaning). The module
#: docstring's table says the same for readers.
VARIABLES = {
    "TESTBED_PLANNER": ("estimate, measure", "estimate: how auto decides (testbed.set_planner)"),
    "TESTBED_WISDOM": ("a file path, or off/none/0", "the user cache folder's wisdom.json; off: in memory only"),
    "TESTBED_WORKSPACE_BYTES": ("an integer >= 0 (bytes)", "268435456 (256 MiB) of scratch kept per thread"),
    "TESTBED_NUMBA_CACHE": ("1/on/true/yes or 0/off/false/no", "on: kernels use Numba's on-disk cache"),
    "TESTBED_ISA": (
        "generic, avx2, avx512 (at most the CPU's own row)",
        "the CPU's row: the widest vector instructions the kernels and auto's table assume",
    ),
}


class EnvironmentVariableWarning(RuntimeWarning):
    """A ``TESTBED_*`` environment variable has a value testbed cannot read; its default is used instead."""


_warned: set[tuple[str, str]] = set()


def _raw(name: str) -> str | None:
    """The variable's value with surrounding spaces removed; None when unset or blank."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def env_warning(name: str, value: str, accepted: str, default: object) -> None:
    """The policy's one warning for ``name=value`` (once per process): for a reader whose check needs more
    than :func:`env_choice`, :func:`env_int` or :func:`env_flag` (a value valid in general but not here)."""
    _malformed(name, value.strip(), accepted, default)


def _malformed(name: str, value: str, accepted: str, default: object) -> None:
    if (name, value) in _warned:
        return
    _warned.add((name, value))
    warnings.warn(
        f"ignoring the environment variable {name}={value!r}: accepted values are {accepted}; "
        f"using the default {default!r}",
        EnvironmentVariableWarning,
        stacklevel=4,
    )


@overload
def env_choice(name: str, choices: Mapping[str, T], default: T) -> T: ...
@overload
def env_choice(name: str, choices: Sequence[str], default: str) -> str: ...
def env_choice(name, choices, default):
    """The value of ``name`` if it is one of ``choices`` (case-insensitive), else ``default``.

    With a mapping, the value the chosen key maps to is returned (the default is returned as given).

    >>> import os
    >>> os.environ["TESTBED_EXAMPLE"] = " Measure "
    >>> env_choice("TESTBED_EXAMPLE", ("estimate", "measure"), "estimate")
    'measure'
    >>> del os.environ["TESTBED_EXAMPLE"]
    """
    value = _raw(name)
    if value is None:
        return default
    key = value.lower()
    if key in choices:
        return choices[key] if isinstance(choices, Mapping) else key
    _malformed(name, value, ", ".join(choices), default)
    return default


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """The value of ``name`` as an integer (``_`` separators allowed) at least ``minimum``, else ``default``.

    >>> import os, warnings
    >>> os.environ["TESTBED_EXAMPLE"] = "a lot"
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     env_int("TESTBED_EXAMPLE", 7, minimum=0)
    7
    >>> print(caught[0].message)
    ignoring the environment variable TESTBED_EXAMPLE='a lot': accepted values are an integer >= 0; using the default 7
    >>> del os.environ["TESTBED_EXAMPLE"]
    """
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (minimum is not None and number < minimum):
        _malformed(name, value, "an integer" + ("" if minimum is None else f" >= {minimum}"), default)
        return default
    return number


def env_flag(name: str, default: bool) -> bool:
    """The value of ``name`` as yes/no (:data:`FLAG_WORDS`, case-insensitive), else ``default``."""
    accepted = "1/on/true/yes or 0/off/false/no"
    value = _raw(name)
    if value is None:
        return default
    flag = FLAG_WORDS.get(value.lower())
    if flag is None:
        _malformed(name, value, accepted, default)
        return default
    return flag
