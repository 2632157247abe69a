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

A task may depend on earlier ones (a kernel whose first tasks pack the operands the later ones read): the
producer calls :func:`mark_done` when its task is complete and the consumer :func:`wait_done` before it reads.
Tasks are handed out in order and a worker runs each to its end, so a task waited on has already been taken
by a worker that is running it, never by one that is waiting: no deadlock, on any number of threads (with one,
the tasks simply run in order).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["mark_done", "next_task", "wait_done"]


@intrinsic
def next_task(typingctx, counter):
    """``counter[0]++`` as one atomic operation; returns the value before the increment (int64)."""
    if not (isinstance(counter, types.Array) and counter.ndim == 1 and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, signature.args[0], array, [context.get_constant(types.intp, 0)]
        )
        return builder.atomic_rmw("add", pointer, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return types.int64(counter), codegen


def _flag_pointer(context, builder, signature, args):
    array = context.make_array(signature.args[0])(context, builder, args[0])
    index = context.cast(builder, args[1], signature.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, signature.args[0], array, [index])


def _flags_ok(flags, index):
    return (
        isinstance(flags, types.Array)
        and flags.ndim == 1
        and flags.dtype == types.int64
        and isinstance(index, types.Integer)
    )


@intrinsic
def mark_done(typingctx, flags, index):
    """``flags[index] = 1`` as an atomic store with release ordering: every write before it is visible to a
    thread that sees the flag set (:func:`wait_done`)."""
    if not _flags_ok(flags, index):
        return None

    def codegen(context, builder, signature, args):
        builder.store_atomic(
            ir.Constant(ir.IntType(64), 1), _flag_pointer(context, builder, signature, args), "release", 8
        )
        return context.get_dummy_value()

    return types.none(flags, index), codegen


@intrinsic
def wait_done(typingctx, flags, index):
    """Spins until ``flags[index]`` is set (atomic loads with acquire ordering): what the task that set it wrote
    is then visible to this thread."""
    if not _flags_ok(flags, index):
        return None

    def codegen(context, builder, signature, args):
        pointer = _flag_pointer(context, builder, signature, args)
        loop = builder.append_basic_block("wait_done.loop")
        done = builder.append_basic_block("wait_done.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        value = builder.load_atomic(pointer, "acquire", 8)
        builder.cbranch(builder.icmp_signed("!=", value, ir.Constant(ir.IntType(64), 0)), done, loop)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.none(flags, index), codegen
