"""sqref.parallel.run_tasks: the same results, in the same order, in-process and on a Dask
cluster; the in-process default never imports Dask; an unreachable scheduler is a one-line
error; a killed worker changes no result. The cluster tests share ONE LocalCluster of two
processes (a module-scoped fixture: starting one takes seconds) and skip without Dask."""
import contextlib
import importlib.util
import os
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import sqref
import sqref.clipping
import sqref.data
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
import os, sys, tempfile
from sqref import parallel
from sqref.cli import main
from sqref.data import DATA_DIR
from sqref.studies import clipping
clipping.MODELS, clipping.BITS = ("lenet5",), range(4, 5)
assert parallel.run_tasks(dict, [{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
tmp = tempfile.mkdtemp()
assert main(["study", "clipping", "-q", "--cache", os.path.join(tmp, "cache")]) == 0
model, golden = str(DATA_DIR / "lenet300.h5"), os.path.join(tmp, "g.h5")
assert main(["eval", model, "-q"]) == 0
assert main(["golden", model, "--mode", "onnxruntime", "--count", "5", "-o", golden, "-q"]) == 0
assert main(["verify", golden, "--backend", "sqref", "-q"]) == 0
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


class FakeClient:
    """client.run(fn) as Dask's: {worker address: fn()} (here: what `answers` says each worker returns)."""

    def __init__(self, answers):
        self.answers = answers

    def run(self, fn):
        if isinstance(self.answers, Exception):
            raise self.answers
        return dict(self.answers)


def test_a_worker_with_another_sqref_is_a_one_line_error():
    mine = parallel.installed_version()
    assert mine[0] == sqref.__version__ and mine[1] == np.__version__ and len(mine[2]) == 64
    parallel.check_versions(FakeClient({"tcp://a:1": mine, "tcp://b:2": list(mine)}))  # as JSON-ish lists too
    edited = (mine[0], mine[1], "0" * 64)
    with pytest.raises(ValueError, match=r"^worker tcp://b:2 runs sqref .*, sources 000000000000; this process "
                                         r"runs sqref .*\(install the same sqref and NumPy on every worker\)$"):
        parallel.check_versions(FakeClient({"tcp://a:1": mine, "tcp://b:2": edited}))
    with pytest.raises(ValueError, match=r"^cannot read the sqref version of the workers: ModuleNotFoundError: "
                                         r"No module named 'sqref' \(install the same sqref on every worker\)$"):
        parallel.check_versions(FakeClient(ModuleNotFoundError("No module named 'sqref'")))


@pytest.mark.parametrize("option", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]])
def test_structural_alone_on_a_cluster_is_a_one_line_error(option, capsys):
    assert main(["study", "structural", *option]) == 2
    err = capsys.readouterr().err
    assert err == (f"sqref: error: 'structural' runs in-process only: it measures the wall time and peak memory "
                   f"of child processes, which cells running at the same time would distort (drop {option[0]}; "
                   f"'all' {option[0]} runs it in this process after the others)\n"), err


# --- on a LocalCluster of two processes -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scheduler():
    pytest.importorskip("dask.distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import this test file
    with parallel.local_cluster(2) as cluster:
        yield cluster.scheduler_address


def test_the_workers_run_this_sqref(scheduler):
    with parallel.connect(scheduler) as client:  # connect checked it; this says what it compared
        client.wait_for_workers(2, timeout=30)
        assert set(client.run(parallel.installed_version).values()) == {parallel.installed_version()}


def unfinished_tasks(dask_scheduler):
    """On the scheduler: how many run_one tasks are submitted and not finished."""
    return sum(str(key).startswith("run_one") and task.state in ("waiting", "no-worker", "queued", "processing")
               for key, task in dask_scheduler.tasks.items())


def test_the_cluster_gets_a_window_of_tasks_at_a_time(scheduler, monkeypatch):
    monkeypatch.setattr(parallel, "WINDOW_PER_THREAD", 1)  # 2 workers of one thread: 2 tasks out at a time
    tasks = [{"name": f"w{i}", "size": 1, "pause": 0.2} for i in range(8)]
    seen = []
    with parallel.connect(scheduler) as client:
        client.wait_for_workers(2, timeout=30)
        results = run_tasks(draw, tasks, scheduler=scheduler,
                            progress=lambda done, total: seen.append(client.run_on_scheduler(unfinished_tasks)))
    assert results == run_tasks(draw, tasks)
    assert len(seen) == 8 and max(seen) <= 2, seen  # (all at once, the first count would be 7)


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


def draw_scaled(name, size, pause, scale, x):
    """draw, with a shared argument and a part: a killed worker loses neither."""
    return draw(name, size, task_seed({"name": name, "size": size, "pause": pause}), pause), scale * x


@contextlib.contextmanager
def workers_to_kill(scheduler):
    """(a client of the cluster once both workers are up, {worker address: pid}); this process's
    environment is put back afterwards: the nanny sets its variables here again when it restarts a
    killed worker."""
    saved = dict(os.environ)
    try:
        with parallel.connect(scheduler) as client:
            client.wait_for_workers(2, timeout=30)
            yield client, client.run(os.getpid)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def assert_restarted(client, pid):
    """The nanny started a new worker process in place of the killed `pid`."""
    client.wait_for_workers(2, timeout=30)
    assert pid not in client.run(os.getpid).values()


@pytest.mark.parametrize("large", [False, True], ids=["plain", "shared-and-parts"])
def test_a_killed_worker_changes_no_result(scheduler, large):
    tasks = [{"name": f"k{i}", "size": 2, "pause": 0.3} for i in range(12)]
    fn, kwargs = draw, {}
    if large:
        fn, kwargs = draw_scaled, {"shared": {"scale": 2.0}, "parts": [{"x": float(i)} for i in range(12)]}
    with workers_to_kill(scheduler) as (client, pids):
        victim = next(iter(pids.values()))
        killed = []

        def kill_one(done, total):
            if done == 2 and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        results = run_tasks(fn, tasks, scheduler=scheduler, progress=kill_one, **kwargs)
        assert killed and results == run_tasks(fn, tasks, **kwargs)
        assert_restarted(client, victim)


# --- large arguments: shared (sent once to every worker) and parts (one per task) -------------------------------

def weigh(name, scale, x, seed):
    """A task with a shared argument (scale) and a part (x): its seed comes from the task alone."""
    return name, seed, float(np.sum(scale * x))


SHARED_TASKS = [{"name": f"w{i}"} for i in range(5)]
PARTS = [{"x": np.arange(i, i + 3, dtype=np.float64)} for i in range(5)]


def test_shared_and_parts_reach_every_task_in_process():
    results = run_tasks(weigh, SHARED_TASKS, shared={"scale": np.float64(2.0)}, parts=PARTS)
    assert results == [(f"w{i}", task_seed({"name": f"w{i}"}), 2.0 * (3 * i + 3)) for i in range(5)]
    seen = []
    run_tasks(weigh, SHARED_TASKS, shared={"scale": 1.0}, parts=PARTS, on_result=lambda i, r: seen.append((i, r[0])))
    assert seen == [(i, f"w{i}") for i in range(5)]
    with pytest.raises(ValueError, match="argument 'x' is given twice"):
        run_tasks(weigh, SHARED_TASKS, shared={"scale": 1.0, "x": 1.0}, parts=PARTS)
    with pytest.raises(ValueError, match="parts must hold one dict per task: 2 parts for 5 tasks"):
        run_tasks(weigh, SHARED_TASKS, shared={"scale": 1.0}, parts=PARTS[:2])


def test_shared_and_parts_on_the_cluster(scheduler):
    shared = {"scale": np.float64(3.0)}
    assert (run_tasks(weigh, SHARED_TASKS, scheduler=scheduler, shared=shared, parts=PARTS)
            == run_tasks(weigh, SHARED_TASKS, shared=shared, parts=PARTS))


# --- sqref eval, golden and verify on the cluster -----------------------------------------------------------------

LENET5, LENET300 = (os.fspath(sqref.data.DATA_DIR / f"{name}.h5") for name in ("lenet5", "lenet300"))


def borrow(monkeypatch, address, started):
    """--workers N starts parallel.local_cluster(N): make it hand out the module's cluster."""
    class Borrowed:
        scheduler_address = address

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(parallel, "local_cluster", lambda workers: started.append(workers) or Borrowed())


def without_seconds(text):
    """A command's JSON object without its wall-clock field."""
    result = json.loads(text)
    result.pop("seconds")
    return result


def test_eval_is_identical_on_the_cluster(scheduler, capsys, monkeypatch):
    argv = ["eval", LENET5, "--reference", LENET300, "--json", "-q"]
    assert main(argv) == 0
    alone = without_seconds(capsys.readouterr().out)
    assert alone["agreement"] is not None and alone["accuracy"] is not None
    assert main([*argv, "--scheduler", scheduler]) == 0
    assert without_seconds(capsys.readouterr().out) == alone
    started = []
    borrow(monkeypatch, scheduler, started)
    assert main([*argv, "--workers", "2"]) == 0
    assert started == [2] and without_seconds(capsys.readouterr().out) == alone


def test_golden_and_verify_are_identical_on_the_cluster(scheduler, tmp_path, capsys, monkeypatch):
    """A golden file of 40 images (two batches, the second partial) in mode fbgemm: the same bytes;
    verified by sqref (exact) and by onnxruntime (ties differ: mismatch rows with indices), the
    same report."""
    files = []
    for where, extra in (("alone", []), ("cluster", ["--scheduler", scheduler])):
        (tmp_path / where).mkdir()
        files.append(tmp_path / where / "g.h5")  # the same name: the file records its command
        assert main(["golden", LENET5, "--mode", "fbgemm", "--count", "40", "-o", str(files[-1]), "-q", *extra]) == 0
    capsys.readouterr()
    assert files[0].read_bytes() == files[1].read_bytes()
    backends = ["sqref"] + (["onnxruntime"] if importlib.util.find_spec("onnxruntime") else [])
    for backend in backends:
        argv = ["verify", str(files[0]), "--backend", backend, "-q"]
        code = main(argv)
        alone = capsys.readouterr().out
        assert main([*argv, "--scheduler", scheduler]) == code
        assert capsys.readouterr().out == alone
        assert main([*argv, "--json"]) == code
        alone_json = without_seconds(capsys.readouterr().out.splitlines()[-1])
        started = []
        borrow(monkeypatch, scheduler, started)
        assert main([*argv, "--json", "--workers", "2"]) == code and started == [2]
        assert without_seconds(capsys.readouterr().out.splitlines()[-1]) == alone_json
        assert (code, alone_json["match"]) == ((0, True) if backend == "sqref" else (1, False)), (backend, code)


def test_verify_with_another_backend_on_a_cluster_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    out = tmp_path / "g.h5"
    assert main(["golden", LENET300, "--mode", "fbgemm", "--count", "2", "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--backend", "torch", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "verify runs the backends sqref, onnxruntime so far, not 'torch'" in err, err


def test_a_quantized_onnx_golden_runs_in_process_only(tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    import h5py

    golden_path = tmp_path / "ort.golden.h5"
    with h5py.File(golden_path, "w") as f:
        f.attrs["format"] = "sqref-onnx-golden"
    assert main(["verify", str(golden_path), "--backend", "sqref", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a quantized ONNX model's golden file runs in-process only" in err, err
    pytest.importorskip("onnx")
    from sqref.backends.onnx import export_onnx
    from sqref.jobs.integer import prepare

    model_path = tmp_path / "q.onnx"
    model_path.write_bytes(export_onnx(prepare(LENET300)[0]).SerializeToString())
    assert main(["golden", str(model_path), "--mode", "onnxruntime", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scheduler runs sqref's own integer golden files" in err, err


# --- the clipping study's cache -----------------------------------------------------------------------------------

def counting_cells(monkeypatch, fail_after=None):
    """Replace the study's cell function by one that counts its calls (and raises after `fail_after`)."""
    calls = []

    def cell(**task):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("interrupted")
        calls.append(task)
        return real(**task)

    real = clipping_study.clipping_cell
    monkeypatch.setattr(clipping_study, "clipping_cell", cell)
    return calls


def test_an_interrupted_study_resumes_from_its_cache(small_clipping, tmp_path, capsys, monkeypatch):
    assert main(["study", "clipping", "-q"]) == 0
    alone = capsys.readouterr().out
    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        counting_cells(patch, fail_after=5)
        assert main(["study", "clipping", "-q", "--cache", str(cache)]) == 1  # the 6th cell fails
    assert "interrupted" in capsys.readouterr().err
    entries = sorted((cache / "clipping").iterdir())
    assert len(entries) == 5 and all(json.loads(p.read_text())["format"] == "sqref-cell-cache" for p in entries)
    with monkeypatch.context() as patch:
        calls = counting_cells(patch)
        assert main(["study", "clipping", "--cache", str(cache)]) == 0
        out, err = capsys.readouterr()
        assert out == alone and len(calls) == 12 - 5
        assert "clipping (5 of 12 cells from the cache)" in err
        assert main(["study", "clipping", "-q", "--cache", str(cache)]) == 0
        assert capsys.readouterr().out == alone and len(calls) == 12 - 5  # every cell from the cache


def test_a_corrupted_cache_entry_is_computed_again(small_clipping, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert main(["study", "clipping", "-q", "--cache", str(cache)]) == 0
    alone = capsys.readouterr().out
    first, second, *_ = sorted((cache / "clipping").iterdir())
    first.write_text(first.read_text()[:40])  # truncated: not JSON
    entry = json.loads(second.read_text())
    entry["result"][0] = 0.5  # still JSON, but not the result its checksum says
    second.write_text(json.dumps(entry))
    calls = counting_cells(monkeypatch)
    assert main(["study", "clipping", "-q", "--cache", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert out == alone and len(calls) == 2
    assert err.count("ignored the corrupted cache entry") == 2 and "does not match its result_sha256" in err, err
    assert json.loads(second.read_text())["result"][0] != 0.5  # rewritten


def test_the_cache_works_with_the_cluster(scheduler, small_clipping, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["study", "clipping", "-q", "--cache", str(cache)]) == 0
    alone = capsys.readouterr().out
    for path in sorted((cache / "clipping").iterdir())[::2]:
        path.unlink()
    assert main(["study", "clipping", "-q", "--cache", str(cache), "--scheduler", scheduler]) == 0
    assert capsys.readouterr().out == alone and len(list((cache / "clipping").iterdir())) == 12


@pytest.mark.parametrize("name, message", [
    ("clipping", "cache {path} is not a directory"),
    ("structural", "--cache: 'structural' keeps no cache: it runs in this process, and again every time "
                   "(drop --cache)"),
])
def test_a_bad_cache_is_a_one_line_error(name, message, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    assert main(["study", name, "--cache", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"sqref: error: {message.format(path=path)}\n", err


# --- every converted study, reduced: the same bytes in-process and on the cluster ---------------------------------

# module -> {constant: value}: the studies read these in this process to list their cells (each cell gets
# everything it needs as parameters, so the workers, which never see these values, compute the same cells)
REDUCED = {
    "sqref.studies.paper": {"MODELS": ["lenet300"], "PER_LAYER_RANKS": [10]},
    "sqref.studies.finetune": {"FINETUNE_SETTINGS": {"lenet5": [20, "2,conv1=4", 1]}, "FINETUNE_SEEDS": [0],
                               "SELECT_SEEDS": [0], "SELECT_SETTING": [20, "2,conv1=4", 1],
                               "FINETUNE_CANDIDATES": {"labels only": None, "distill T=4, alpha=0.9": [4.0, 0.9]},
                               "BITS_CANDIDATES": ["2,conv1=4"], "CROSSFIT_SPLITS": 2},
    # no rank for the per-layer row ("no rank in  qualifies"): its greedy search on LeNet-5 takes 25 s
    "sqref.studies.replicate": {"REPLICATE_SEEDS": [1], "PER_LAYER_RANKS": [],
                                "FINETUNE_SETTINGS": {"lenet5": [20, "2,conv1=4", 1]}},
    "sqref.studies.tradeoff": {"RANKS": [20], "BITS": [4, 6]},
    "sqref.zoo": {"RECIPES": {"lenet5": {"epochs": 1, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                         "batch_size": 32, "max_shift": 2, "keep": "last"}}},
}
# the study functions' own arguments; the in-process finetune run fills a cache (read back on the cluster)
KWARGS = {"paper": {}, "finetune-select": {}, "finetune-bits": {}, "finetune-keep": {}, "finetune": {},
          "replicate": {}, "tradeoff": {"finetune_epochs": 1}}

IN_PROCESS = """
import importlib, json, sys
reduced, kwargs, cache = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
for module, values in reduced.items():
    for name, value in values.items():
        setattr(importlib.import_module(module), name, value)
from sqref.studies import STUDIES
kwargs["finetune"]["cache"] = cache
out = {name: STUDIES[name](**kw) for name, kw in kwargs.items()}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
assert not loaded, loaded
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """({study: markdown} of every reduced study run in a child process with one BLAS thread, as the
    workers have (fine-tuning sums in the BLAS's order): the in-process default, which never imports
    Dask; the cache its finetune study filled)."""
    cache = tmp_path_factory.mktemp("cells")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, json.dumps(REDUCED), json.dumps(KWARGS), str(cache)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), cache


@pytest.fixture
def reduced(monkeypatch):
    for module, values in REDUCED.items():
        for name, value in values.items():
            monkeypatch.setattr(importlib.import_module(module), name, value)


@pytest.mark.parametrize("name", list(KWARGS))
def test_a_reduced_study_is_byte_identical_on_the_cluster(name, scheduler, alone, reduced):
    from sqref.studies import STUDIES

    assert STUDIES[name](scheduler=scheduler, **KWARGS[name]) == alone[0][name]


def test_a_worker_killed_during_a_fine_tuning_cell_changes_no_figure(scheduler, alone, reduced):
    """The reduced finetune study has one cell (LeNet-5, one epoch, about 2.5 s here): its worker is killed
    while the scheduler has reported the cell running there for half a second; Dask runs the cell again on
    the other worker, and the markdown is the in-process run's, byte for byte."""
    import threading

    from sqref.studies.finetune import finetune_study

    with workers_to_kill(scheduler) as (client, pids):
        killed, stop = [], threading.Event()

        def kill_the_busy_worker():
            busy_since = {}
            while not stop.wait(0.1):
                for address, keys in client.processing().items():
                    if not keys or address not in pids:
                        busy_since.pop(address, None)
                        continue
                    busy_since.setdefault(address, time.monotonic())
                    if time.monotonic() - busy_since[address] > 0.5:
                        os.kill(pids[address], signal.SIGKILL)
                        killed.append(pids[address])
                        return

        killer = threading.Thread(target=kill_the_busy_worker, daemon=True)
        killer.start()
        try:
            markdown = finetune_study(scheduler=scheduler)
        finally:
            stop.set()
            killer.join()
        assert killed, "the cell ended before a worker was killed"
        assert markdown == alone[0]["finetune"]
        assert_restarted(client, killed[0])


def test_a_fine_tuning_study_reads_every_cell_back_from_its_cache(scheduler, alone, reduced, capsys):
    from sqref.studies.finetune import finetune_study

    markdown, cache = alone
    assert "BLAS threads: OPENBLAS_NUM_THREADS=1 (" in markdown["finetune"]
    assert len(list((cache / "finetune").iterdir())) == 1
    # the cluster's cells have the in-process run's keys (parameters, BLAS threads, code version)
    assert finetune_study(progress=True, scheduler=scheduler, cache=str(cache)) == markdown["finetune"]
    assert "finetune: all 1 cells from the cache" in capsys.readouterr().err


# --- sqref study all: one LocalCluster for the studies that use it, then structural in this process --------------

def test_all_uses_one_cluster_then_runs_structural_here(monkeypatch, tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    events = []

    class Borrowed:
        scheduler_address = "tcp://127.0.0.1:1"

        def __enter__(self):
            events.append("start")
            return self

        def __exit__(self, *exc):
            events.append("stop")
            return False

    def on_cluster(name):
        def study(progress=False, *, workers=None, scheduler=None, cache=None):
            events.append((name, workers, scheduler, cache))
            return f"## {name}\n"
        return study

    def structural(progress=False):
        events.append("structural")
        return "## structural\n"

    monkeypatch.setattr(parallel, "local_cluster", lambda workers: events.append(workers) or Borrowed())
    monkeypatch.setattr("sqref.cli.study.STUDIES", {"one": on_cluster("one"), "structural": structural,
                                                    "two": on_cluster("two")})
    cache = str(tmp_path / "cells")
    assert main(["study", "all", "--workers", "2", "--cache", cache]) == 0
    out, err = capsys.readouterr()
    assert events == [2, "start", ("one", None, Borrowed.scheduler_address, cache),
                      ("two", None, Borrowed.scheduler_address, cache), "stop", "structural"]
    assert out.index("## one") < out.index("## structural") < out.index("## two")  # the page keeps its order
    assert "sqref study 2/3: two\nsqref study 3/3: structural (in this process)\n" in err
    events.clear()
    assert main(["study", "all", "-q", "--scheduler", "tcp://127.0.0.1:2"]) == 0
    assert events == [("one", None, "tcp://127.0.0.1:2", None), ("two", None, "tcp://127.0.0.1:2", None),
                      "structural"]
