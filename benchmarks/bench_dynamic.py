"""Time the dynamic clipping rule per tensor and per channel, against a baseline implementation, in one run.

    python benchmarks/bench_dynamic.py [--bits 4 [8 ...]] [--sizes 1e6 1e7 2.5e7] [--channels 1024]
                                       [--repeats 3] [--baseline 44bfe27] [--parts]

(docs/performance.md runs --sizes 2.5e7 --bits 4 8: 1,024 channels of 24,414 weights.)

For each size and bit width: a float32 N(0, 1) tensor, timed per tensor and per
channel (axis=0 of a (C, N/C) reshape), with this checkout's sqref.clipping and
with the baseline's (the files sqref/clipping.py and, if the revision has it,
sqref/mse_search.py at git revision --baseline, loaded beside them; default: the
last commit whose search ran one channel at a time; --baseline '' skips it). One
warm-up call of each, then the median of `repeats` calls, wall and CPU time.
The ratios are the numbers to watch, since they carry over between machines far
better than seconds: per-channel / per-tensor for each implementation, new /
baseline for each layout, and dynamic / one fake_quant pass (how many passes
over the weights the rule costs).
"""
import argparse
import importlib.util
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from sqref import clipping, mse_search, quant

ROOT = pathlib.Path(__file__).resolve().parent.parent


def median_time(fn, repeats):
    """(wall, cpu) seconds, each the median of `repeats` calls after one warm-up call.

    CPU time (time.process_time) is printed too because it is far less
    sensitive than wall time to other processes sharing the machine; the
    code timed here is single-threaded NumPy, so on an idle machine the two agree.
    """
    fn()  # warm-up: page faults, caches, the lru_cache of the ACIQ constants
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def git_source(revision, path):
    """The text of `path` at git `revision`, or None if the revision (or the file there) is not available."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{path}"],
                              check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def load_module(source, name, folder):
    """Python source text as a module named `name` (written to `folder`, then imported from there)."""
    path = pathlib.Path(folder) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_baseline(revision):
    """sqref/clipping.py at `revision` as a module, or None.

    It imports the current sqref.quant, and the sqref.mse_search of the same
    revision when that revision has one (it is put in sys.modules while the
    baseline's clipping module is imported, then the current one is restored).
    """
    if not revision:
        return None
    source = git_source(revision, "sqref/clipping.py")
    if source is None:
        print(f"baseline {revision!r} not available; timing this checkout only", file=sys.stderr)
        return None
    folder = tempfile.mkdtemp(prefix="sqref-baseline-")
    search_source = git_source(revision, "sqref/mse_search.py")
    current = sys.modules["sqref.mse_search"]
    try:
        if search_source is not None:
            sys.modules["sqref.mse_search"] = load_module(search_source, f"mse_search_{revision}", folder)
        return load_module(source, f"clipping_{revision}", folder)
    finally:
        sys.modules["sqref.mse_search"] = current


def search_alone(rows, bits, search=mse_search):
    """What the exact search costs without any candidate from another rule: sort |x| per row, prefix sums,
    search_scales, in blocks of rows as the dynamic rule runs it (clipping.SEARCH_BLOCK). search: the
    sqref.mse_search module to run (benchmarks/bound_slack.py passes a baseline's)."""
    a = np.sort(np.abs(rows), axis=1).astype(np.float64)
    m = a.shape[1]
    step = max(1, clipping.SEARCH_BLOCK // (m * (2 ** (bits - 1) - 1)))
    cum1, cum2 = np.empty((step, m + 1)), np.empty((step, m + 1))
    for r0 in range(0, a.shape[0], step):
        block = a[r0:r0 + step]
        search.prefix_sums(block, cum1[:len(block)], cum2[:len(block)])
        search.search_scales(block, cum1[:len(block)], cum2[:len(block)], bits)


def print_parts(w, w_rows, bits, total, repeats):
    """CPU seconds of the public rules the per-channel dynamic rule runs inside (this checkout), and their share.

    The per-channel rule runs the per-tensor rule (its candidate for every
    channel), and computes every other rule's boundary per channel from one
    shared histogram; what is left is its own sort, prefix sums, search and
    exact evaluation of the candidates. Last, the search alone (sort, prefix
    sums, search_scales; no candidate of another rule, no exact evaluation),
    per channel and per tensor: the part no choice about candidates removes.
    """
    parts = {
        "per-tensor dynamic": lambda: clipping.boundary_dynamic(w, bits),
        "kl per channel": lambda: clipping.boundary_kl(w_rows, bits, axis=0),
        "kl-slides per channel": lambda: clipping.boundary_kl_slides(w_rows, bits, axis=0),
        "search alone per channel": lambda: search_alone(w_rows, bits),
    }
    print(f"{'':>16} parts of the per-channel time ({total:.2f} s cpu), each timed alone:")
    for name, fn in parts.items():
        cpu = median_time(fn, repeats)[1]
        print(f"{'':>16} {name:>24} {cpu:>6.2f} s  {100 * cpu / total:>4.0f}%")
    whole = median_time(lambda: search_alone(w.reshape(1, -1), bits), repeats)[1]
    print(f"{'':>16} {'search alone per tensor':>24} {whole:>6.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[4])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 2.5e7])
    parser.add_argument("--channels", type=int, default=1024, metavar="C")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default="44bfe27", metavar="REV")
    parser.add_argument("--parts", action="store_true",
                        help="also time, per channel, the parts of the per-channel dynamic rule that are public "
                             "functions of their own (the per-tensor dynamic rule, the kl and kl-slides rules), "
                             "and the exact search alone (sort, prefix sums, search), per channel and per tensor")
    args = parser.parse_args()

    impls = {"new": clipping}
    baseline = load_baseline(args.baseline)
    if baseline is not None:
        impls[f"base {args.baseline}"] = baseline
    rng = np.random.default_rng(0)
    print(f"float32 N(0,1) weights, median of {args.repeats} after one warm-up; seconds as wall/cpu")
    for size in args.sizes:
        n = int(size)
        w = rng.standard_normal(n).astype(np.float32)
        c = args.channels
        w_rows = w[: n - n % c].reshape(c, -1)
        for bits in args.bits:
            print(f"\n{n:,} weights, {c} channels of {w_rows.shape[1]:,}, {bits} bits")
            print(f"{'implementation':>16} {'per tensor':>14} {'per channel':>14} {'chan/tensor':>12} "
                  f"{'tensor / 1 fake_quant':>22}")
            alpha = clipping.boundary_dynamic(w, bits)
            t_fq = median_time(lambda: quant.fake_quant(w, bits=bits, alpha=alpha), args.repeats)
            times = {}
            for name, impl in impls.items():
                t_tensor = median_time(lambda: impl.boundary_dynamic(w, bits), args.repeats)
                t_chan = median_time(lambda: impl.boundary_dynamic(w_rows, bits, axis=0), args.repeats)
                times[name] = (t_tensor, t_chan)
                print(f"{name:>16} {t_tensor[0]:>6.2f}/{t_tensor[1]:<6.2f} {t_chan[0]:>6.2f}/{t_chan[1]:<6.2f} "
                      f"{t_chan[1] / t_tensor[1]:>12.1f} {t_tensor[1] / t_fq[1]:>22.1f}")
            if args.parts:
                print_parts(w, w_rows, bits, times["new"][1][1], args.repeats)
            if len(times) == 2:
                (new_t, new_c), (old_t, old_c) = times.values()
                print(f"{'new / baseline':>16} {new_t[1] / old_t[1]:>13.2f}x {new_c[1] / old_c[1]:>13.2f}x"
                      "   (cpu time)")


if __name__ == "__main__":
    main()
