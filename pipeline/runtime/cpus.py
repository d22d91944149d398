"""How many loader processes a task runs when the config asks for -1 (as many as its CPUs allow)."""

from __future__ import annotations

import os

# CPUs left to everything but the loader workers when the count is automatic. Training: the step
# thread, the batch pool's slot-returner thread and the driver's threads, which starve (and slow the
# step) when workers take every CPU. The teacher stage runs its prep and hand-over threads and two
# writer processes beside its workers. Chosen from the loader-size runs in docs/benchmarks.md.
TRAIN_RESERVE = 6
TEACHER_RESERVE = 2
# Evaluation has no optimiser step: the forward thread and the pool's slot returner.
EVAL_RESERVE = 2


def task_cpus(ranks_here: int = 1) -> int:
    """The CPUs this process may use: its affinity, shared with the other ranks on the node when they
    all see every CPU (torchrun; SLURM binds each task to its own)."""
    cpus = len(os.sched_getaffinity(0))
    if ranks_here > 1 and cpus >= (os.cpu_count() or cpus):
        cpus //= ranks_here
    return max(1, cpus)


def loader_workers(requested: int, reserve: int, ranks_here: int = 1) -> int:
    """`requested` loader processes, or for -1 this process's CPUs less `reserve`, at least one."""
    if requested >= 0:
        return requested
    return max(1, task_cpus(ranks_here) - reserve)
