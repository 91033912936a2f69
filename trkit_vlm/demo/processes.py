"""Jobs in spawned worker processes, results as they finish: the one pool the quickstart and the suite share.

Spawn, not fork: each worker starts a clean interpreter (no forked torch thread pools) and builds its own
model once, in ``initializer``. A script that calls this needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, TypeVar

__all__ = ["run_in_processes"]

Job = TypeVar("Job")


def run_in_processes(
    job_fn: Callable[[Job], Any],
    jobs: Iterable[Job],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple = (),
) -> Iterator[tuple[Job, Any]]:
    """Yield ``(job, job_fn(job))`` in the order jobs finish, from ``workers`` spawned processes.

    ``job_fn`` and ``initializer`` must be module-level functions (they are pickled by name); a job's
    exception is raised here when its result is reached.
    """
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs
    ) as pool:
        futures = {pool.submit(job_fn, job): job for job in jobs}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
