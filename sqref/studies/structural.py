"""`sqref study structural`: sizes, time and peak memory of `sqref compress`
on AlexNet- and VGG-16-shaped models with random weights.

It runs in this process only, one child process at a time, and keeps no
cell cache: other work running beside a child would distort the time and
memory it measures (`sqref study all --workers N` runs it here, after the
cluster's studies; docs/scale.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from sqref.progress import Progress
from sqref.studies.common import tick

ARCH_RANKS = (("alexnet", (64, 256, 1024)), ("vgg16", (64, 256, 1024)))


def child_peak_rss_bytes(argv) -> tuple[dict, int, float]:
    """Run a sqref command in a child process; return its JSON, its peak RSS and wall time."""
    start = time.perf_counter()
    # The child reports its own peak (VmHWM of /proc/self/status, in KiB) as it exits: ru_maxrss
    # would also count the memory of this parent process, inherited at fork.
    child = ("import re, sys; from sqref.cli import main; code = main(sys.argv[1:]); "
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr); "
             "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", child, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout), 1024 * int(proc.stderr.strip().splitlines()[-1]), seconds


def structural_study(progress=False) -> str:
    """AlexNet- and VGG-16-shaped models with random weights: sizes, time and memory only."""
    lines = ["## Structural scale: AlexNet- and VGG-16-shaped models (random weights: sizes only)", "",
             "Command: `sqref study structural`. Each row runs, in a child process, `sqref compress MODEL --rank R "
             "--bits 8 --svd-solver randomized --no-eval` on a model written by `sqref init --arch NAME`; rank R is "
             "shared by the FC layers (a layer past break-even stays whole). Random weights have a flat spectrum, so "
             "the SVD error here says nothing about a trained model; accuracy is not measured. Time and peak memory "
             "(the child's maximum resident set) include loading and writing the files.", "",
             "| model | params | float32 size | rank | payload ratio | file ratio | compress time | peak memory | "
             "peak / float size |", "|---|---|---|---|---|---|---|---|---|"]
    # cells: one child process each (init, then one compress per rank)
    bar = Progress(sum(1 + len(ranks) for _, ranks in ARCH_RANKS), "structural (child processes)", enabled=progress)
    with tempfile.TemporaryDirectory() as tmp:
        for arch, ranks in ARCH_RANKS:
            model_path = os.path.join(tmp, f"{arch}.h5")
            info, _, _ = child_peak_rss_bytes(["init", "--arch", arch, "-o", model_path, "--json", "-q"])
            tick(bar)
            float_bytes = 4 * info["params"]
            for rank in ranks:
                out = os.path.join(tmp, f"{arch}.r{rank}.h5")
                report, peak, seconds = child_peak_rss_bytes(
                    ["compress", model_path, "--rank", str(rank), "--bits", "8", "--svd-solver", "randomized",
                     "--no-eval", "-o", out, "--json", "-q"])
                total = report["total"]
                lines.append(f"| {arch} | {info['params']:,} | {float_bytes / 2**20:,.0f} MiB | {rank} | "
                             f"{total['payload_ratio']:.1f}x | {total['file_ratio']:.1f}x | {seconds:.0f} s | "
                             f"{peak / 2**20:,.0f} MiB | {peak / float_bytes:.2f} |")
                os.remove(out)
                tick(bar)
    bar.close()
    return "\n".join(lines) + "\n"
