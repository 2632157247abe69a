"""Dynamic hand-out of tasks to the threads of a Numba parallel kernel.

Numba's ``prange`` under its OpenMP layer splits the iterations into one contiguous share per thread, decided
before the loop starts (``numba.parallel_chunksize`` only cuts the shares finer; they are still assigned
statically). On a shared machine a thread that loses its core for a few milliseconds then holds up the whole
kernel while the other threads idle. A kernel that loops ``for worker in prange(workers)`` and takes its tasks
with :func:`next_task` instead runs one worker per thread, each taking the next unstarted task when it is done
with its last, so a slow thread simply takes fewer tasks (OpenMP's ``schedule(dynamic)``)::

    counter = np.zeros(1, np.int64)
    for worker in prange(workers):
        task = next_task(counter)
        while task < tasks:
            ...                                  # compute task, with the worker's own buffers
            task = next_task(counter)

Which worker computes a task never changes what the task computes, so results stay bitwise repeatable.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["next_task"]


@intrinsic
def next_task(typingctx, counter):
    """``counter[0]++`` as one atomic operation; returns the value before the increment (int64)."""
    if not (isinstance(counter, types.Array) and counter.ndim == 1 and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], array,
                                           [context.get_constant(types.intp, 0)])
        return builder.atomic_rmw("add", pointer, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return types.int64(counter), codegen
