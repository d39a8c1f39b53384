"""Run independent tasks in this process or on a Dask cluster, with identical results.

    run_tasks(fn, tasks)                              in this process (Dask is never imported)
    run_tasks(fn, tasks, workers=4)                   a LocalCluster of 4 worker processes on this machine
    run_tasks(fn, tasks, scheduler="tcp://host:8786") an existing cluster (`dask scheduler`, `dask worker`)
    run_tasks(fn, tasks, shared={"model": m}, parts=[{"x": x[0:250]}, ...])   large arguments, sent once

`fn` is a pure, module-level function (the workers import it by name, so
they need the same sqref version, which connect checks: check_versions); each
task is a dict of its parameters and `fn(**task)` returns a small result
(numbers, short strings: they travel back to this process). The results come
back in the order the tasks were listed, whatever order they finished in, so
a study that formats them here writes the same bytes in-process and on a
cluster (docs/scale.md).

Large arguments never enter a task's parameters. `shared` ({name: object}, e.g. a model)
is given to every task and sent once to every worker (Dask's scatter with broadcast);
`parts` (one {name: array} per task, e.g. a batch of inputs) travels with its task only, to
the worker that runs it (through the scheduler, which keeps it until the task is done, so a
task whose worker died runs again elsewhere). Both are passed to `fn` as keyword arguments
beside the task's parameters, and neither enters the task's seed.

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
import functools
import hashlib
import inspect
import json
import os
import pathlib

import numpy as np

CONNECT_TIMEOUT = 5.0  # seconds to reach a --scheduler and find a worker there
WINDOW_PER_THREAD = 4  # tasks submitted and not yet done, per worker thread (keeps every worker fed)
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


def run_one(fn, task: dict, shared: dict | None = None, part: dict | None = None):
    """Run one task as every runner does: one BLAS thread, its own seed (from `task` only);
    `fn(**task, **shared, **part)`."""
    seed = task_seed(task)
    kwargs = {**task, **(shared or {}), **(part or {})}
    if "seed" not in kwargs and _takes_seed(fn):
        kwargs["seed"] = seed
    state = np.random.get_state()  # restored after: in-process, the caller's generator is left as it was
    np.random.seed(seed)
    try:
        with _blas_one_thread():
            return fn(**kwargs)
    finally:
        np.random.set_state(state)


def _check(fn, tasks, workers, scheduler, shared=None, parts=None) -> list[dict]:
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
    _check_arguments(tasks, shared, parts)
    return tasks


def _check_arguments(tasks, shared, parts) -> None:
    """shared: a dict with str keys; parts: one dict per task; no name given twice to a task."""
    if shared is not None and (not isinstance(shared, dict) or not all(isinstance(k, str) for k in shared)):
        raise ValueError(f"shared must be a dict of named arguments, got {type(shared).__name__}")
    if parts is not None and len(parts) != len(tasks):
        raise ValueError(f"parts must hold one dict per task: {len(parts)} parts for {len(tasks)} tasks")
    for index, task in enumerate(tasks):
        part = {} if parts is None else parts[index]
        if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
            raise ValueError(f"part {index} must be a dict of named arguments, got {type(part).__name__}")
        twice = set(task) & set(shared or {}) | set(task) & set(part) | set(shared or {}) & set(part)
        if twice:
            raise ValueError(f"task {index}: argument {sorted(twice)[0]!r} is given twice (task, shared, parts)")


def _failed(index: int, task: dict, exc: BaseException) -> TaskError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return TaskError(f"task {index} {task!r} failed: {type(exc).__name__}: {first}".rstrip(": "))


def run_tasks(fn, tasks, *, workers=None, scheduler=None, progress=None, shared=None, parts=None,
              on_result=None) -> list:
    """[fn(**task, **shared, **part) for task, part in zip(tasks, parts)], run in this process
    (default), on a LocalCluster of `workers` processes, or on the cluster whose scheduler listens
    at `scheduler`. `shared` is sent once to every worker, each part once to its task's worker
    (module docstring). In this process, after each task completes (in completion order),
    `on_result(index, result)` and then `progress(done, total)` are called; the returned results
    are in the order of `tasks`. A failing task raises TaskError naming it; an unreachable
    scheduler raises ValueError in one line."""
    parts = None if parts is None else list(parts)
    tasks = _check(fn, tasks, workers, scheduler, shared, parts)
    parts = [{}] * len(tasks) if parts is None else parts
    if workers is None and scheduler is None:
        results = []
        for index, task in enumerate(tasks):
            try:
                results.append(run_one(fn, task, shared, parts[index]))
            except Exception as exc:
                raise _failed(index, task, exc) from exc
            _completed(index, results[-1], index + 1, len(tasks), on_result, progress)
        return results
    with (local_cluster(workers) if workers is not None else contextlib.nullcontext()) as cluster:
        address = cluster.scheduler_address if cluster is not None else scheduler
        with connect(address) as client:
            return _run_on(client, fn, tasks, progress, shared or {}, parts, on_result)


def _completed(index, result, done, total, on_result, progress) -> None:
    if on_result is not None:
        on_result(index, result)
    if progress is not None:
        progress(done, total)


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
    if nothing answers there, or no worker joins, within `timeout` seconds (CONNECT_TIMEOUT),
    or a worker runs another sqref or NumPy (check_versions: the workers there when it connects)."""
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
        check_versions(client)
        yield client
    finally:
        client.close()


@functools.lru_cache(maxsize=None)
def installed_version() -> tuple:
    """(sqref's version, NumPy's version, the SHA-256 of every .py file of the sqref package, by
    relative path): what must be the same in this process and on every worker for a task to give
    the same result there. Computed once per process."""
    import sqref

    root = pathlib.Path(sqref.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return sqref.__version__, np.__version__, digest.hexdigest()


def check_versions(client) -> None:
    """A one-line ValueError unless every worker of `client` has this process's installed_version()
    (a worker with another sqref or NumPy would compute other numbers, or fail on a missing name)."""
    mine = installed_version()
    try:
        theirs = client.run(installed_version)
    except Exception as exc:  # e.g. a worker without sqref, which cannot import this function
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"cannot read the sqref version of the workers: {type(exc).__name__}: {first} "
                         "(install the same sqref on every worker)") from None
    for address, version in sorted(theirs.items()):
        if tuple(version) != mine:
            raise ValueError(f"worker {address} runs sqref {version[0]}, NumPy {version[1]}, sources "
                             f"{version[2][:12]}; this process runs sqref {mine[0]}, NumPy {mine[1]}, sources "
                             f"{mine[2][:12]} (install the same sqref and NumPy on every worker)")


def _broadcast(client, shared: dict) -> dict:
    """{name: future} of each shared object, sent once to every worker (a worker that joins
    later, or restarts, fetches it from another). Random keys (hash=False): tokenizing a model
    would cost more than sending it. A list is scattered element by element: hence [value]."""
    return {name: client.scatter([value], broadcast=True, hash=False)[0] for name, value in shared.items()}


def _run_on(client, fn, tasks, progress, shared, parts, on_result) -> list:
    """The tasks on the cluster, at most WINDOW_PER_THREAD per worker thread at a time: a task is
    submitted when one before it completes, so the scheduler never holds more than that many tasks'
    parts (a batch of inputs each), whatever the number of tasks."""
    from dask.distributed import as_completed

    shared_futures = _broadcast(client, shared)
    window = max(1, WINDOW_PER_THREAD * sum(client.nthreads().values()))
    # a part travels inside its task (this process -> scheduler -> worker), not scattered: the scheduler
    # keeps it, so a task whose worker died runs again elsewhere (scattered data dies with its worker)
    live, submitted = {}, 0  # key: (index, future) of each task submitted and not yet read back

    def submit():
        nonlocal submitted
        future = client.submit(run_one, fn, tasks[submitted], shared_futures, parts[submitted], pure=False)
        live[future.key] = submitted, future
        submitted += 1
        return future

    running = as_completed([submit() for _ in range(min(window, len(tasks)))], loop=client.loop)
    results, done = [None] * len(tasks), 0
    try:
        for future in running:
            index, _ = live.pop(future.key)  # read once, then dropped: Dask forgets a task no future refers to
            try:
                results[index] = future.result()
            except Exception as exc:
                raise _failed(index, tasks[index], exc) from exc
            done += 1
            if submitted < len(tasks):
                running.add(submit())
            _completed(index, results[index], done, len(tasks), on_result, progress)
    finally:
        client.cancel([future for _, future in live.values()])
        client.cancel(list(shared_futures.values()))
    return results
