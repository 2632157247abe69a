"""``auto``: dispatch each call to the backend the planner chooses for it (:func:`testbed.planner.choose_backend`).

The choice, in order: wisdom measured for the exact problem on this machine (:mod:`testbed.wisdom`); in the
``measure`` planner mode, a measurement made now; else the class rule (:mod:`testbed.preference`: the first
available backend supporting the configuration in its class's measured order, the CUDA backends for device
arrays). ``auto`` works without torch and never raises ``UnsupportedConfiguration`` for a valid configuration.
``testbed.explain`` says which backend it runs for a call, and why.
"""

from __future__ import annotations

from ..planner import choose_backend
from ..registry import Backend, is_device_array, register


def dispatch(x, weight, bias, problem):
    return choose_backend(problem, on_device=is_device_array(x)).run(x, weight, bias, problem)


register(
    Backend(
        name="auto",
        description="wisdom, else the fastest measured backend for the configuration's class (testbed.preference)",
        run=dispatch,
        device="any",
        choose=choose_backend,
        ranks=(1, 2, 3),
    )
)
