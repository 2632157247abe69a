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


def dispatch_data_gradient(grad_output, weight, problem):
    chosen = choose_backend(problem, is_device_array(grad_output), "backward_data").backward_data
    assert chosen is not None  # chosen among the backends that declare the direction
    return chosen(grad_output, weight, problem)


def dispatch_weight_gradient(grad_output, x, problem):
    chosen = choose_backend(problem, is_device_array(grad_output), "backward_weight").backward_weight
    assert chosen is not None  # chosen among the backends that declare the direction
    return chosen(grad_output, x, problem)


register(
    Backend(
        name="auto",
        description="wisdom, else the fastest measured backend for the configuration's class (testbed.preference)",
        run=dispatch,
        device="any",
        choose=choose_backend,
        ranks=(1, 2, 3),
        backward_data=dispatch_data_gradient,
        backward_weight=dispatch_weight_gradient,
    )
)
