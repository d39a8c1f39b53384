"""Wall time and peak memory of `sqref compress`, each run in its own child process.

    python benchmarks/bench_compress.py [--repeats 1] [--skip-vgg] [--dynamic-repeats 1]

Rows:
    lenet5  `sqref compress data/lenet5.h5` with the CLI's defaults (SVD rank by
            --max-drop 0.5 on the validation split, 8 bits, dynamic clipping, evaluation)
    vgg16   `sqref compress vgg16.h5 --rank 256 --svd-solver randomized --no-eval` on
            the random-weight VGG-16-shaped model written by `sqref init --arch vgg16`

Wall time is measured around the child process (interpreter start, loading and
writing files included); peak memory is the child's VmHWM (its own address
space's high-water mark, read by the child from /proc/self/status as it
exits); its ru_maxrss (os.wait4) is printed beside it but can include the
parent's RSS at fork (see run_child). The float model's size is 4 bytes x its parameter count; the
ratio peak / float size says how many float copies of the model the
pipeline holds at its worst. With --repeats > 1 the median wall time and
the largest peak are reported. Then the dynamic clipping search's scaling
(benchmarks/bench_dynamic.py, 1M/10M/25M weights) with a small repeat count.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The child runs the CLI and then reports its own peak from /proc/self/status (VmHWM, the high-water mark
# of the address space exec created), one line on stderr after the CLI's output.
CHILD = ("import sys; from sqref.cli import main; code = main(sys.argv[1:]); "
         "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]; "
         "print('VmHWM_KiB', hwm, file=sys.stderr); sys.exit(code)")


def run_child(argv) -> tuple[dict, float, int, int]:
    """(JSON report, wall seconds, ru_maxrss bytes, VmHWM bytes) of one `sqref ...` child process.

    # NOTE: Linux carries the forking parent's high-water mark into the child's
    # ru_maxrss across exec (exec_mmap folds the old mm's hiwater_rss into
    # signal->maxrss), so ru_maxrss is max(parent RSS at fork, child peak): after
    # run_all has imported torch it read 540 MiB for a LeNet-5 compress that peaks
    # at under 200 MiB. VmHWM belongs to the new address space only; it is the
    # figure to use, and ru_maxrss is printed beside it.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # Read both pipes to EOF, then reap the child with os.wait4 (not proc.wait) to get its own rusage.
    # NOTE: sequential reads could deadlock if stderr filled its pipe first; the commands run with -q and --json.
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"sqref {' '.join(argv)} exited {proc.returncode}: {err.strip().splitlines()[-1:]}")
    hwm = int(err.strip().splitlines()[-1].split()[1]) * 1024
    return json.loads(out), seconds, usage.ru_maxrss * 1024, hwm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--dynamic-repeats", type=int, default=1, help="0 skips the dynamic-search scaling")
    args = parser.parse_args(argv)

    header = (f"{'model':<7} {'params':>12} {'float size':>11} {'wall s':>8} {'peak VmHWM':>11} {'peak/float':>10} "
              f"{'ru_maxrss':>13} {'file ratio':>10}")
    print(f"`sqref compress` in a child process (python -c 'sqref.cli.main(...)'), median wall of {args.repeats}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [("lenet5", os.path.join(ROOT, "data/lenet5.h5"), [])]
        if not args.skip_vgg:
            vgg = os.path.join(tmp, "vgg16.h5")
            run_child(["init", "--arch", "vgg16", "-o", vgg, "--json", "-q"])
            jobs.append(("vgg16", vgg, ["--rank", "256", "--svd-solver", "randomized", "--no-eval"]))
        for name, path, extra in jobs:
            walls, peaks, maxrss = [], [], []
            for i in range(args.repeats):
                out = os.path.join(tmp, f"{name}.{i}.out.h5")
                report, seconds, rss, hwm = run_child(["compress", path, *extra, "-o", out, "--json", "-q"])
                walls.append(seconds)
                maxrss.append(rss)
                peaks.append(hwm)
                os.remove(out)
            total = report["total"]
            params = total["original_params"]
            float_bytes = 4 * params  # float32
            print(f"{name:<7} {params:>12,} {float_bytes / 2**20:>7.1f} MiB {statistics.median(walls):8.1f} "
                  f"{max(peaks) / 2**20:>7.0f} MiB {max(peaks) / float_bytes:10.2f} {max(maxrss) / 2**20:>9.0f} MiB "
                  f"{total['file_ratio']:9.1f}x")
    if args.dynamic_repeats:
        print()
        print("dynamic clipping search scaling (bench_dynamic.py):")
        import bench_dynamic

        saved = sys.argv
        sys.argv = ["bench_dynamic.py", "--repeats", str(args.dynamic_repeats)]
        try:
            bench_dynamic.main()
        finally:
            sys.argv = saved


if __name__ == "__main__":
    main()
