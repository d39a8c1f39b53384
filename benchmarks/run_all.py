"""Every sqref benchmark in sequence, in one process, with the machine described first.

    python benchmarks/run_all.py [--quick] [--profile]

Prints the CPU, core count, numpy's BLAS, the library versions and the load
average at the start (and the load average before each benchmark, since
other jobs may share the machine), then runs bench_forward, bench_conv,
bench_integer, bench_reference and bench_compress (which ends with bench_dynamic). Each
benchmark's ratios are measured side by side within its own run. --quick
uses fewer repeats and skips the VGG-16 compress (a few minutes). --profile
first prints profile_layers' per-layer, per-phase tables (LeNet-5 and the
small VGG, float and integer paths).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_compress  # noqa: E402
import bench_conv  # noqa: E402
import bench_forward  # noqa: E402
import bench_integer  # noqa: E402
import bench_reference  # noqa: E402
import profile_layers  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_summary() -> str:
    import numpy as np

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        np.show_config()
    lines = [line.strip() for line in buf.getvalue().splitlines()]
    picked = [line for line in lines if line.startswith(("name:", "version:", "openblas configuration:"))]
    return "; ".join(dict.fromkeys(picked[:3])) or "unknown"


def describe_machine():
    import numpy as np

    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for name in ("torch", "onnx", "onnxruntime"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} missing")
    try:
        from threadpoolctl import threadpool_info

        pools = "; ".join(f"{p['internal_api']} {p.get('version')} threads={p['num_threads']}" for p in threadpool_info())
    except ImportError:
        pools = "threadpoolctl not installed"
    print(f"cpu: {cpu_model()}; nproc {os.cpu_count()}; {platform.platform()}")
    print(f"blas: {blas_summary()}")
    print(f"thread pools: {pools}")
    print(f"versions: {', '.join(versions)}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def section(title):
    print()
    print(f"=== {title}  (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {time.strftime('%H:%M:%S')})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the per-layer, per-phase profile first")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    describe_machine()
    if args.profile:
        section("profile_layers: per layer and per phase, float and integer paths")
        profile_layers.main(["--repeats", "3" if args.quick else "7"])
    section("bench_forward: float forward, sqref vs PyTorch")
    bench_forward.main(["--repeats", "3" if args.quick else "7"])
    section("bench_conv: the small VGG's conv layers, method by method")
    bench_conv.main(["--repeats", "3" if args.quick else "5"])
    section("bench_integer: integer path vs float path vs onnxruntime")
    bench_integer.main(["--repeats", "3" if args.quick else "5"])
    section("bench_reference: sqref vs onnx.reference.ReferenceEvaluator")
    bench_reference.main(["--repeats", "2" if args.quick else "3"])
    section("bench_compress: `sqref compress` time and peak memory")
    bench_compress.main(["--dynamic-repeats", "1"] + (["--skip-vgg"] if args.quick else []))
    print()
    print(f"total {time.perf_counter() - start:.0f} s; load average at end: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
