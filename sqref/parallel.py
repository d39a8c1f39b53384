"""Run independent tasks in this process or on a Dask cluster, with identical results.

    run_tasks(fn, tasks)                              in this process (Dask is never imported)
    run_tasks(fn, tasks, workers=4)                   a LocalCluster of 4 worker processes on this machine
    run_tasks(fn, tasks, scheduler="tcp://host:8786") an existing cluster (`dask scheduler`, `dask worker`)

`fn` is a pure, module-level function (the workers import it by name, so
they need the same sqref version); each task is a dict of its parameters and
`fn(**task)` returns a small result (numbers, short strings: they travel back
to this process). The results come back in the order the tasks were listed,
whatever order they finished in, so a study that formats them here writes the
same bytes in-process and on a cluster (docs/scale.md).

Every task runs the same way wherever it runs:

- one BLAS thread: the LocalCluster's workers start with OPENBLAS_NUM_THREADS,
  OMP_NUM_THREADS and MKL_NUM_THREADS set to 1 (so do `dask worker`s: it is
  Dask's default `distributed.nanny.pre-spawn-environ`), and around each task
  threadpoolctl, when it is installed, limits the BLAS to one thread, in this
  process too. Without threadpoolctl an in-process run uses the BLAS's default
  threads; set OPENBLAS_NUM_THREADS=1 before starting Python to match exactly.
- its own seed: `task_seed(task)`, a hash of its parameters, never of its
  position in the list. NumPy's legacy global generator is seeded with it
  before the task runs, and `fn` receives it as `seed=` if it takes a `seed`
  argument (and the task does not set one itself).

The LocalCluster's workers also run without Dask's MALLOC_TRIM_THRESHOLD_=65536,
which made NumPy's large temporaries 3x slower (docs/scale.md: how to do the
same for `dask worker`s on other hosts).

Dask retries a task whose worker died (up to `distributed.scheduler.allowed-failures`
times, 3 by default), so a killed worker changes no result, only the time.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os

import numpy as np

CONNECT_TIMEOUT = 5.0  # seconds to reach a --scheduler and find a worker there
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class TaskError(RuntimeError):
    """A task raised: the message names the task (its position and parameters) and the error."""


def task_seed(task: dict) -> int:
    """A 32-bit seed from the task's parameters (not its position): the first 4 bytes of the
    SHA-256 of the parameters as sorted JSON (so they must be JSON values: str, int, float,
    bool, None, lists and dicts of them; ValueError otherwise)."""
    try:
        text = json.dumps(task, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task parameters must be JSON values (str, int, float, bool, None, lists, dicts) "
                         f"to derive the task's seed: {exc}") from None
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _blas_one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _takes_seed(fn) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def run_one(fn, task: dict):
    """Run one task as every runner does: one BLAS thread, its own seed."""
    seed = task_seed(task)
    kwargs = dict(task)
    if "seed" not in kwargs and _takes_seed(fn):
        kwargs["seed"] = seed
    state = np.random.get_state()  # restored after: in-process, the caller's generator is left as it was
    np.random.seed(seed)
    try:
        with _blas_one_thread():
            return fn(**kwargs)
    finally:
        np.random.set_state(state)


def _check(fn, tasks, workers, scheduler) -> list[dict]:
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    tasks = list(tasks)
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or not all(isinstance(key, str) for key in task):
            raise ValueError(f"task {index} must be a dict of parameters with str keys, got {task!r}")
        task_seed(task)  # JSON parameters: checked before anything runs
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local cluster) or scheduler (an existing one), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise ValueError(f"scheduler must be an address such as tcp://HOST:8786, got {scheduler!r}")
    return tasks


def _failed(index: int, task: dict, exc: BaseException) -> TaskError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return TaskError(f"task {index} {task!r} failed: {type(exc).__name__}: {first}".rstrip(": "))


def run_tasks(fn, tasks, *, workers=None, scheduler=None, progress=None) -> list:
    """[fn(**task) for task in tasks], run in this process (default), on a LocalCluster of
    `workers` processes, or on the cluster whose scheduler listens at `scheduler`.
    `progress(done, total)` is called in this process after each task completes (in
    completion order); the results are in the order of `tasks`. A failing task raises
    TaskError naming it; an unreachable scheduler raises ValueError in one line."""
    tasks = _check(fn, tasks, workers, scheduler)
    if workers is None and scheduler is None:
        results = []
        for index, task in enumerate(tasks):
            try:
                results.append(run_one(fn, task))
            except Exception as exc:
                raise _failed(index, task, exc) from exc
            if progress is not None:
                progress(index + 1, len(tasks))
        return results
    with (local_cluster(workers) if workers is not None else contextlib.nullcontext()) as cluster:
        address = cluster.scheduler_address if cluster is not None else scheduler
        with connect(address) as client:
            return _run_on(client, fn, tasks, progress)


def local_cluster(workers: int):
    """A dask.distributed LocalCluster on this machine: `workers` processes of one thread
    each (and one BLAS thread), on 127.0.0.1, no dashboard. Use it as a context manager."""
    import dask
    from dask.distributed import LocalCluster

    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536: glibc then maps and unmaps every
    # large NumPy temporary, and the clipping study's cells ran 3x slower (in system time).
    # The nanny sets the workers' variables in this process's environment before it spawns them
    # (so they hold when NumPy loads there); they are put back here afterwards.
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, env=dict(ONE_THREAD))
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def connect(address: str, timeout: float | None = None):
    """A Client of the scheduler at `address`, once it has a worker; ValueError in one line
    if nothing answers there, or no worker joins, within `timeout` seconds (CONNECT_TIMEOUT)."""
    from dask.distributed import Client
    from distributed.comm import parse_address, parse_host_port

    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:  # a malformed address, before a Client exists (it would spend seconds closing)
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"no Dask scheduler at {address}: {exc} (expected tcp://HOST:PORT)") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError, TypeError) as exc:  # refused, timed out (TimeoutError is an OSError), bad address
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"no Dask scheduler at {address}: {first}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            raise ValueError(f"the Dask scheduler at {address} has no worker (start one: "
                             f"dask worker {address})") from None
        yield client
    finally:
        client.close()


def _run_on(client, fn, tasks, progress) -> list:
    from dask.distributed import as_completed

    futures = [client.submit(run_one, fn, task, pure=False) for task in tasks]
    where = {future.key: index for index, future in enumerate(futures)}
    results, done = [None] * len(tasks), 0
    try:
        for future in as_completed(futures, loop=client.loop):
            index = where[future.key]
            try:
                results[index] = future.result()
            except Exception as exc:
                raise _failed(index, tasks[index], exc) from exc
            done += 1
            if progress is not None:
                progress(done, len(tasks))
    finally:
        client.cancel([future for future in futures if not future.done()])
    return results
