"""sqref.parallel.run_tasks: the same results, in the same order, in-process and on a Dask
cluster; the in-process default never imports Dask; an unreachable scheduler is a one-line
error; a killed worker changes no result. The cluster tests share ONE LocalCluster of two
processes (a module-scoped fixture: starting one takes seconds) and skip without Dask."""
import os
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import sqref.clipping
from sqref import parallel
from sqref.cli import main
from sqref.parallel import TaskError, run_tasks, task_seed
from sqref.studies import clipping as clipping_study


def draw(name, size, seed, pause=0.0):
    """A cheap pure task: its seed and a few numbers drawn from it (and from the global generator)."""
    time.sleep(pause)
    return name, seed, np.random.default_rng(seed).integers(0, 1000, size).tolist(), int(np.random.randint(1000))


def fail_on(k):
    if k == 2:
        raise ValueError("no two\nsecond line")
    return k


TASKS = [{"name": f"t{i}", "size": 1 + i % 3, "pause": 0.05 * (5 - i) if i < 5 else 0.0} for i in range(8)]


def test_in_process_keeps_order_and_seeds_come_from_parameters():
    calls = []
    results = run_tasks(draw, TASKS, progress=lambda done, total: calls.append((done, total)))
    assert [r[0] for r in results] == [t["name"] for t in TASKS]
    assert [r[1] for r in results] == [task_seed(t) for t in TASKS]
    assert calls == [(i + 1, len(TASKS)) for i in range(len(TASKS))]
    # the seed is a function of the parameters, never of the position
    assert run_tasks(draw, TASKS[::-1]) == results[::-1]
    assert task_seed({"a": 1, "b": 2}) == task_seed({"b": 2, "a": 1}) != task_seed({"a": 1, "b": 3})


def test_in_process_leaves_the_callers_generator_alone():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    run_tasks(draw, TASKS[:2])
    assert np.random.rand() == expected


def test_a_failing_task_is_named():
    with pytest.raises(TaskError, match=r"^task 2 \{'k': 2\} failed: ValueError: no two$"):
        run_tasks(fail_on, [{"k": k} for k in range(4)])


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": [{"k": 1}, 3]}, "task 1 must be a dict of parameters"),
    ({"tasks": [{1: 2}]}, "task 0 must be a dict of parameters with str keys"),
    ({"workers": 0}, "workers must be a positive integer, got 0"),
    ({"workers": 2, "scheduler": "tcp://127.0.0.1:1"}, "either workers"),
    ({"scheduler": " "}, "scheduler must be an address"),
    ({"tasks": [{"k": object()}]}, "task parameters must be JSON values"),
])
def test_bad_arguments_fail_before_anything_runs(kwargs, message):
    kwargs = {"tasks": [{"k": 1}], **kwargs}
    with pytest.raises(ValueError, match=message):
        run_tasks(fail_on, **kwargs)


NO_DASK = """
import sys
from sqref import parallel
from sqref.cli import main
from sqref.studies import clipping
clipping.MODELS, clipping.BITS = ("lenet5",), range(4, 5)
assert parallel.run_tasks(dict, [{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
assert main(["study", "clipping", "-q"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
assert not loaded, loaded
"""


def test_the_in_process_default_never_imports_dask():
    done = subprocess.run([sys.executable, "-c", NO_DASK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| dynamic |" in done.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_a_one_line_error_within_seconds(capsys, monkeypatch):
    pytest.importorskip("dask.distributed")
    assert parallel.CONNECT_TIMEOUT <= 5
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", 1.5)  # keeps the test short
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"^no Dask scheduler at {address}: "):
        run_tasks(draw, TASKS, scheduler=address)
    assert main(["study", "clipping", "--scheduler", address]) == 2
    assert time.perf_counter() - start < 2 * parallel.CONNECT_TIMEOUT + 5
    err = capsys.readouterr().err
    assert err.startswith(f"sqref: error: no Dask scheduler at {address}") and err.count("\n") == 1, err
    start = time.perf_counter()
    assert main(["study", "clipping", "--scheduler", "localhost"]) == 2
    assert time.perf_counter() - start < 2
    assert capsys.readouterr().err == ("sqref: error: no Dask scheduler at localhost: missing port number in address "
                                       "'localhost' (expected tcp://HOST:PORT)\n")


@pytest.mark.parametrize("option", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]])
def test_a_study_not_yet_converted_says_which_are(option, capsys):
    assert main(["study", "paper", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "on a Dask cluster so far: clipping; 'paper' runs in-process only" in err, err


# --- on a LocalCluster of two processes -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scheduler():
    pytest.importorskip("dask.distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import this test file
    with parallel.local_cluster(2) as cluster:
        yield cluster.scheduler_address


def test_the_workers_run_one_blas_thread(scheduler):
    keys = [*parallel.ONE_THREAD, "MALLOC_TRIM_THRESHOLD_"]
    with parallel.connect(scheduler) as client:
        client.wait_for_workers(2, timeout=30)
        env = client.run(lambda: {key: os.environ.get(key) for key in keys})
    # and without Dask's MALLOC_TRIM_THRESHOLD_=65536 (3x slower NumPy temporaries), unless set here
    expected = {**parallel.ONE_THREAD, "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}
    assert len(env) == 2 and all(value == expected for value in env.values()), env
    assert os.environ.get("PYTHONHASHSEED") != "6640"  # the nanny's variables did not stay in this process


def test_the_cluster_returns_what_in_process_does_in_task_order(scheduler):
    calls = []
    results = run_tasks(draw, TASKS, scheduler=scheduler, progress=lambda done, total: calls.append((done, total)))
    assert results == run_tasks(draw, TASKS)  # the first tasks sleep longest: they finish last, come back first
    assert calls == [(i + 1, len(TASKS)) for i in range(len(TASKS))]
    with pytest.raises(TaskError, match=r"^task 2 \{'k': 2\} failed: ValueError: no two$"):
        run_tasks(fail_on, [{"k": k} for k in range(4)], scheduler=scheduler)


@pytest.fixture
def small_clipping(monkeypatch):
    """The clipping study on LeNet-5 only, 3 rules x 2 bit widths x 2 grids: 12 cells."""
    monkeypatch.setattr(clipping_study, "MODELS", ("lenet5",))
    monkeypatch.setattr(clipping_study, "BITS", range(3, 5))
    monkeypatch.setattr(sqref.clipping, "RULES", ("max", "kl", "dynamic"))


def test_the_clipping_study_is_byte_identical_on_the_cluster(scheduler, small_clipping, capsys, monkeypatch):
    assert main(["study", "clipping", "-q"]) == 0
    alone = capsys.readouterr().out
    assert alone.count("| kl |") == 2
    assert main(["study", "clipping", "-q", "--scheduler", scheduler]) == 0
    assert capsys.readouterr().out == alone
    # --workers N starts parallel.local_cluster(N): here, one that hands out the module's cluster
    started = []

    class Borrowed:
        scheduler_address = scheduler

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(parallel, "local_cluster", lambda workers: started.append(workers) or Borrowed())
    assert main(["study", "clipping", "-q", "--workers", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert started == [2]
    assert json.loads(out)["markdown"] + "\n" == alone


def test_a_killed_worker_changes_no_result(scheduler):
    tasks = [{"name": f"k{i}", "size": 2, "pause": 0.3} for i in range(12)]
    saved = dict(os.environ)  # the nanny sets its variables in this process again when it restarts the worker
    try:
        with parallel.connect(scheduler) as client:
            client.wait_for_workers(2, timeout=30)
            pids = list(client.run(os.getpid).values())
            killed = []

            def kill_one(done, total):
                if done == 2 and not killed:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])

            results = run_tasks(draw, tasks, scheduler=scheduler, progress=kill_one)
            assert killed and results == run_tasks(draw, tasks)
            client.wait_for_workers(2, timeout=30)  # the nanny restarted it
            assert pids[0] not in client.run(os.getpid).values()
    finally:
        os.environ.clear()
        os.environ.update(saved)
