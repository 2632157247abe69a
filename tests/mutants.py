"""Deliberately broken backends that the suite must catch (tests/test_mutants.py runs it against each).

``TESTBED_MUTANT=<name>`` (read by conftest.py before collection) replaces the registered backend with the
mutant, so the registry-parametrised tests (and ``auto``'s dispatch) run it under the original name.
"""

import dataclasses

import numpy as np

import testbed
from testbed import registry


def _drops_bias(original):
    """Computes the convolution but never adds the bias."""
    return dataclasses.replace(original, run=lambda x, weight, bias, problem: original.run(x, weight, None, problem))


def _declines_groups(original):
    """Declares groups > 1 unsupported (so the tests that use groups would skip)."""
    return dataclasses.replace(original, groups=False)


def _raises_on_groups(original):
    """Declares groups supported, but raises UnsupportedConfiguration for them when called."""

    def run(x, weight, bias, problem):
        if problem.groups > 1:
            raise testbed.UnsupportedConfiguration(original.name, "groups > 1 (undeclared)")
        return original.run(x, weight, bias, problem)

    return dataclasses.replace(original, run=run)


def _flips_kernel_in_data_gradient(original):
    """Computes the data gradient with the kernel flipped along every spatial axis: a convolution taken for the
    correlation the adjoint is (the classic sign-of-the-index slip of a hand-written backward)."""

    def backward_data(grad_output, weight, problem):
        flipped = weight[(Ellipsis, *(slice(None, None, -1),) * problem.rank)]
        return original.backward_data(grad_output, np.ascontiguousarray(flipped), problem)

    return dataclasses.replace(original, backward_data=backward_data)


def _weight_gradient_skips_last_image(original):
    """Reduces the weight gradient over every image of the batch but the last (an off-by-one in the batch loop)."""

    def backward_weight(grad_output, x, problem):
        if problem.batch == 1:
            return original.backward_weight(grad_output, x, problem)
        fewer = problem.with_(batch=problem.batch - 1)
        return original.backward_weight(grad_output[:-1], x[:-1], fewer)

    return dataclasses.replace(original, backward_weight=backward_weight)


def _declines_backward(original):
    """Declares no backward direction (so the backward tests would skip)."""
    return dataclasses.replace(original, backward_data=None, backward_weight=None)


#: mutant name: (backend it replaces, the function making the mutant from the original).
MUTANTS = {
    "col2im_drops_bias": ("col2im", _drops_bias),
    "col2im_declines_groups": ("col2im", _declines_groups),
    "col2im_raises_on_groups": ("col2im", _raises_on_groups),
    "col2im_flips_kernel_in_data_gradient": ("col2im", _flips_kernel_in_data_gradient),
    "col2im_weight_gradient_skips_last_image": ("col2im", _weight_gradient_skips_last_image),
    "col2im_declines_backward": ("col2im", _declines_backward),
}


def install(name: str) -> None:
    """Replace the backend that mutant ``name`` breaks with the mutant, in the registry."""
    if name not in MUTANTS:
        raise ValueError(f"TESTBED_MUTANT must be one of {sorted(MUTANTS)}, got {name!r}")
    backend_name, make = MUTANTS[name]
    original = testbed.get_backend(backend_name)
    registry._REGISTRY[backend_name] = make(original)  # no public way to replace a backend, on purpose
